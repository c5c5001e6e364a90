"""A small flow with the demo's shapes, for the UI test: run as ``python ui_flow.py <store folder>``.

Two subflow runs named for what they make (two trees, as the demo's two ``curate`` runs), each
returning a stage manifest; tasks that take those subflow results (``untracked``, as in the demo); the
real ``cluster_report_task`` publishing a table and a plot, with keys from ``artifact_key``; a
progress artifact. Prints the parent flow run's id as its last line.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from tasks.cluster.task import cluster_report_task
from tasks.common.plots import png_bytes, subplots
from tasks.common.prefect_support import untracked
from tasks.common.progress import ProgressArtifact
from tasks.common.store import Store

POOL = "uipool"


@flow(name="ui_tree", flow_run_name="tree-{pool}-{top}")
def make_tree(root: str, pool: str, top: int) -> dict:
    """A tree manifest of the shape cluster_pool publishes, with a real plot in the store."""
    store = Store(root)
    fig, ax = subplots(figsize=(5, 3))
    ax.bar(range(top), [10 + 3 * i for i in range(top)])
    ax.set_title(f"{top} clusters")
    folder = f"clusters/{pool}/{top}"
    plot = store.write_bytes(f"{folder}/cluster_sizes.png", png_bytes(fig))
    levels = [{"level": 1, "k": top, "inputs": 100,
               "samples_per_cluster": {"min": 10, "median": 20, "mean": 20.0, "max": 40, "empty": 0}}]
    return {"stage": "cluster", "name": pool, "store": store.root, "config": {"levels": [{"k": top}]},
            "outputs": {"folder": store.uri(folder), "plot": plot}, "rows": {"samples": 100},
            "stats": {"levels": levels}}


@task(task_run_name="count samples {name}")
def count_samples(name: str, tree: dict) -> int:
    bar = ProgressArtifact(f"counting the samples of {name}")
    for done in range(1, 4):
        bar.update(done / 3, force=True)
    get_run_logger().info("%s: %d samples", name, tree["rows"]["samples"])
    return tree["rows"]["samples"]


@flow(name="ui_demo")
def ui_demo(root: str) -> str:
    store = Store(root)
    for top in (4, 8):
        tree = untracked(make_tree(root, POOL, top))  # the next subflow's pool (POOL) is in this result
        count_samples(f"tree {top}", tree)
        cluster_report_task(tree, store)
    return str(flow_run.get_id())


if __name__ == "__main__":
    print(ui_demo(sys.argv[1]))
