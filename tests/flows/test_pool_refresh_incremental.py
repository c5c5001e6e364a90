"""pool_refresh on a growing index, end to end: only new work runs, and the result is a fresh run's.

The small pool's index is cut into three parts of one slice each; pool_refresh (download, embed,
filters, tree, subsets) runs after the first part and again after each of the two appends. A run
from scratch on the whole index in another store gives the same downloads, embeddings and row-wise
filter decisions.
"""

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from flow_support import FAST_DOWNLOAD, shard_metadata, task_runs
from flows.pool_refresh import pool_refresh
from tasks.cluster.tree import load_tree
from tasks.common.store import Store

pytestmark = pytest.mark.slow

PART = 200  # rows per part of the index: one slice each
SETTINGS = dict(FAST_DOWNLOAD, slice_size=PART, shard_size=100)
# The barely trained test model puts all images in a narrow cone: only copies reach this cosine.
FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.9, "semdedup_threshold": 0.99999}
CLUSTERING = {"levels": [8, {"k": 3, "resampling_steps": 1}], "engine": "dask"}
SUBSETS = {"balanced": {"recipe": [{"step": "hkmeans", "target": 60}], "reshard": False}}
POOL_WIDE = {"exact_dedup", "phash_dedup", "semdedup", "clip_score"}


def _download_states(flow_run_id) -> list[str]:
    """The states of the flow run's download tasks (by the task's function: run names say which slice)."""
    return sorted(run.state.name for run in task_runs(flow_run_id) if run.task_key.startswith("download_slice_task"))


def _mtimes(root: Path, folder: str, pattern: str) -> dict[str, int]:
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in (root / folder).rglob(pattern)}


def _labels_by_sample(store: Store, tree: dict) -> pd.Series:
    """Level-1 cluster of every tree input, indexed by (shard_id, row)."""
    folder = store.relative(tree["outputs"]["folder"])
    inputs = pd.read_parquet(store.path(f"{folder}/inputs.parquet"))
    return pd.Series(load_tree(store, folder)[0].labels, index=pd.MultiIndex.from_frame(inputs[["shard_id", "row"]]))


def _decisions(filters: dict) -> pd.DataFrame:
    """Every sample's decisions, by uid (img2dataset writes a shard's samples in the order they arrive)."""
    return pd.concat([pd.read_parquet(uri) for uri in filters["outputs"]["decisions"].values()]).set_index("uid")


def _embeddings(embeddings: dict) -> pd.DataFrame:
    """Every sample's image embedding (float32), by uid."""
    frames = [pd.DataFrame(np.load(shard["image_embeddings"]).astype(np.float32),
                           index=pd.read_parquet(shard["parquet"], columns=["uid"])["uid"])
              for shard in embeddings["outputs"]["shards"]]
    return pd.concat(frames)


@pytest.fixture(scope="module")
def dask_address():
    """One cluster for every run (embedding, filters, tree, subsets), as a service's runs share one."""
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=120)
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def refreshes(small_index, web_server, tiny_checkpoint, dask_address, tmp_path_factory):
    index = pd.read_parquet(small_index)
    assert len(index) == 3 * PART
    folder = tmp_path_factory.mktemp("growing-index")
    root = tmp_path_factory.mktemp("incremental-store")
    embedder = {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64}
    # downloads stay in the flow's process (their tasks' states are read back from Prefect below)
    options = dict(SETTINGS, embedder=embedder, filters=FILTERS, dask_address=dask_address, download_on_dask=False)
    runs = []
    for part in range(3):
        index.iloc[part * PART:(part + 1) * PART].to_parquet(folder / f"part-{part}.parquet")
        before = {"slices": _mtimes(root, "pools", "*.tar"), "embeddings": _mtimes(root, "embeddings", "*.npy")}
        state = pool_refresh(pool_index=str(folder), store=str(root), pool_name="grow", embedder=embedder,
                             filters=FILTERS, clustering=CLUSTERING, subsets=SUBSETS, return_state=True, **SETTINGS)
        runs.append({"out": state.result(), "before": before,
                     "downloads": _download_states(state.state_details.flow_run_id)})
    scratch = tmp_path_factory.mktemp("scratch-store")
    fresh = pool_refresh(pool_index=str(folder), store=str(scratch), pool_name="grow", **options)
    return {"runs": runs, "fresh": fresh, "store": Store(str(root)), "root": root}


def test_only_new_slices_and_shards_are_worked_on(refreshes):
    runs, root = refreshes["runs"], refreshes["root"]
    for number, run in enumerate(runs):
        assert run["downloads"] == ["Cached"] * number + ["Completed"]
        for what, pattern in (("slices", "*.tar"), ("embeddings", "*.npy")):
            now = _mtimes(root, "pools" if what == "slices" else "embeddings", pattern)
            assert {path: now[path] for path in run["before"][what]} == run["before"][what]  # old files untouched
            assert len(now) > len(run["before"][what])  # and new ones were written
    shards = [len(run["out"]["embeddings"]["outputs"]["shards"]) for run in runs]
    assert shards == [2, 4, 6]


def test_the_tree_is_assigned_not_refitted_and_subsets_come_from_it(refreshes):
    runs, store = refreshes["runs"], refreshes["store"]
    first = runs[0]["out"]["curated"]
    assert first["assigned"] is None  # nothing to assign to: the first tree is fitted
    trees = [first["tree"]]
    for run in runs[1:]:
        curated = run["out"]["curated"]
        tree = curated["tree"]
        assert curated["assigned"] is not None and tree["content_hash"] == curated["assigned"]["content_hash"]
        assert tree["stats"]["assigned"]["base"] == trees[-1]["outputs"]["folder"]
        assert tree["stats"]["assigned"]["fitted"]["content_hash"] == first["tree"]["content_hash"]
        assert tree["rows"]["samples"] == run["out"]["filters"]["rows"]["kept"]
        previous, now = _labels_by_sample(store, trees[-1]), _labels_by_sample(store, tree)
        both = previous.index.intersection(now.index)
        assert len(both) > 0.8 * len(previous)  # most old samples are still kept
        assert (previous[both] == now[both]).all()  # and none changed cluster
        np.testing.assert_array_equal(*(load_tree(store, store.relative(t["outputs"]["folder"]))[0].centroids
                                        for t in (first["tree"], tree)))
        drift = tree["stats"]["drift"]
        assert [level["level"] for level in drift["levels"]] == [1, 2]
        for level in drift["levels"]:
            assert 0 <= level["far_share_new"] <= 1 and np.isfinite(level["entropy_change"])
        assert drift["new_samples"] == tree["stats"]["assigned"]["new_samples"] > 0
        subset = curated["subsets"]["balanced"]
        assert subset["rows"]["subset"] == 60
        assert tree["content_hash"] in str(subset["inputs"])  # drawn from the assigned tree
        trees.append(tree)


def test_the_result_equals_a_run_from_scratch(refreshes):
    grown, fresh = refreshes["runs"][-1]["out"], refreshes["fresh"]
    assert [s["shard_id"] for s in grown["outputs"]["shards"]] == [s["shard_id"] for s in fresh["outputs"]["shards"]]
    ours, theirs = (shard_metadata(m).set_index("uid").sort_index() for m in (grown, fresh))
    pd.testing.assert_frame_equal(ours[["status", "error_message", "sha256"]], theirs[["status", "error_message", "sha256"]])
    ours, theirs = _embeddings(grown["embeddings"]), _embeddings(fresh["embeddings"])
    assert ours.index.is_unique and sorted(ours.index) == sorted(theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs.loc[ours.index].to_numpy(), atol=2e-3)
    ours, theirs = _decisions(grown["filters"]), _decisions(fresh["filters"])
    assert sorted(ours.index) == sorted(theirs.index)
    rowwise = [column for column in theirs.columns if column.startswith(("keep_", "reason_"))
               and column.split("_", 1)[1] not in POOL_WIDE]
    assert "keep_nsfw_text" in rowwise and "keep_basic" in rowwise
    pd.testing.assert_frame_equal(ours[rowwise], theirs.loc[ours.index, rowwise])
