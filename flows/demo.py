"""Flow ``demo``: the main job on the demo web pool, end to end on one machine.

    python -m flows.demo            # or: make demo

Generates the demo web pool (deterministic, long-tailed, with planted defects), serves it on
127.0.0.1, runs ``pool_refresh`` on it into a local store, checks the download against the
planted failures, trains a ``tiny`` CLIP on the raw downloaded pool (the "no filtering"
baseline, and the embedder later stages start from), evaluates it on held-out, balanced
evaluation sets, embeds and filters the pool with that model, clusters what the filters kept with
one level of k-means and with four levels of hierarchical k-means, checks filters and clusters
against the truth, then runs the curation A/B: subsets of equal size from random sampling, the
filters, balanced sampling from the tree, MetaCLIP balancing and a composition, each trained
with the ``tiny`` scale at equal samples seen and evaluated; their balance over the true concepts
and the accuracies go into one table, and it prints the tables and where everything is.

Every subflow result goes through ``untracked`` (tasks/common/prefect_support.py), so that the
demo's Task Runs tab in the UI lists its tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from flows.curate import curate
from flows.embed_filter import run_embed_filter
from flows.pool_refresh import pool_refresh
from flows.train_eval import train_eval
from tasks.common.catalog import run_name
from tasks.common.catalog_task import resolve_pool_task
from tasks.common.dask_cluster import shared_dask_address
from tasks.common.cli import CliParser, command_line
from tasks.common.errors import InputError
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import store_from, untracked
from tasks.common.store import Store
from tasks.demo_pool.curation_ab import TRAINED_ARMS, demo_subsets
from tasks.demo_pool.generate import DemoPoolConfig
from tasks.demo_pool.task import (DEMO_FILTERS, check_clusters_against_truth, check_download_against_truth,
                                  check_filters_against_truth, check_subsets_against_truth, curation_ab_report,
                                  demo_config, demo_trees, generate_demo_eval_sets_task, generate_demo_pool_task,
                                  long_tail_report, start_demo_server, write_demo_pool_index)

# The raw-pool model is the embedder of every later stage: it keeps the tiny scale's 51,200 samples
# (with 25,600 the demo took 14.5 minutes instead of about 16.5, but its embeddings no longer let the
# tree balance the true concepts: entropy 0.77 against 0.86). Each A/B arm sees 5,120 samples at equal
# samples seen (40 steps of 128): one run per arm is within the noise of seeds at any length the demo
# can afford; benchmarks/curation_ab.py trains the arms longer, over seeds, and the report cites it.
BASELINE_TRAINING: dict = {}
AB_TRAINING = {"samples_seen": 5_120, "batch_size": 128}


@flow(name="demo", log_prints=True)
def demo(workdir: str = ".demo", store: str = "", n_samples: int = 20_000, seed: int = 0,
         timeout: int = 4, dask_address: str = "", train_overrides: dict | None = None,
         storage_options: dict | None = None) -> dict:
    """Run the pipeline on the demo web pool.

    Args:
        workdir: folder for the demo's web root, pool index and (by default) store.
        store: store root; empty means ``<workdir>/store``. May be s3://bucket/prefix.
        n_samples: size of the demo pool.
        seed: the demo pool's seed.
        timeout: seconds before a download request is abandoned (the demo server answers in milliseconds;
            a shard of the download waits this long for each of its planted hanging URLs).
        dask_address: an existing Dask scheduler (tcp://host:8786); empty means a local cluster.
        train_overrides: hyperparameters of the ``tiny`` training scale to change (e.g. samples_seen).
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    """
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    work = Path(workdir).absolute()
    store = store or str(work / "store")
    the_store = store_from(store, storage_options)
    on_store = {"store": store, "storage_options": storage_options}
    web_root = str(work / "web")
    generate_demo_pool_task(web_root, demo_config(n_samples, seed), dask_address or None)
    # one Dask cluster for embedding, filters and trees (each subflow would otherwise start its own); the
    # download runs img2dataset from this process
    with shared_dask_address(dask_address) as dask_address:
        server = start_demo_server(web_root, str(work / "server.json"))
        download = dict(pool_index="", **on_store, pool_name="demo", slice_size=10_000, shard_size=1_000, processes=2,
                        threads=16, image_size=256, timeout=timeout, dask_address=dask_address,
                        download_on_dask=False)  # img2dataset from this process, as benchmarks/download.py measures it
        truth = str(Path(web_root) / "truth.parquet")
        try:
            download["pool_index"] = write_demo_pool_index(web_root, server.base_url, str(work / "pool_index.parquet"))
            manifest = untracked(pool_refresh.with_options(flow_run_name="pool-refresh-demo")(**download))
            check = check_download_against_truth(manifest, truth)
            tasklist = generate_demo_eval_sets_task(str(work / "eval"), seed)
            baseline = untracked(train_eval(**on_store, data=manifest["outputs"]["folder"], tasklist=tasklist,
                                            scale="tiny", overrides={**BASELINE_TRAINING, **(train_overrides or {})},
                                            run_name="raw-pool"))
            long_tail = long_tail_report(the_store, baseline["evaluation"], resolve_pool_task(the_store, "demo"), truth)
            # The model trained on the raw pool is the embedder of the pool (no weights can be downloaded here).
            embedder = {"model": baseline["train"]["config"]["model"],
                        "checkpoint": baseline["train"]["outputs"]["checkpoint"]}
            # embed and filter only: a second pool_refresh would publish the same download (and its artifacts) again
            curated = untracked(run_embed_filter(store, "demo", embedder, {**DEMO_FILTERS, "eval_tasklist": tasklist},
                                                 dask_address, storage_options))
        finally:
            server.stop()
        filter_check = check_filters_against_truth(the_store, curated["filters"], truth)
        kept = curated["filters"]["rows"]["kept"]
        recipes = demo_subsets(kept)
        trees, subsets = {}, {}
        for name, clustering in demo_trees(kept).items():
            out = untracked(curate.with_options(flow_run_name=f"curate-demo-{name}")(
                **on_store, pool_name="demo", clustering={**clustering, "seed": seed}, subsets=recipes[name],
                dask_address=dask_address))
            trees[name] = out["tree"]
            subsets.update(out["subsets"])
        cluster_check = check_clusters_against_truth(the_store, trees, truth)
        snapshot = resolve_pool_task(the_store, "demo")  # the filtered pool the subsets were made from
        balance = check_subsets_against_truth(the_store, snapshot, subsets, truth)
        arms = {name: untracked(train_eval(**on_store, data=subsets[name]["outputs"]["folder"], tasklist=tasklist,
                                           scale="tiny", overrides={**AB_TRAINING, **(train_overrides or {})},
                                           run_name=run_name("ab", name)))
                for name in TRAINED_ARMS}
        ab = curation_ab_report(the_store, snapshot, {name: arm["evaluation"] for name, arm in arms.items()}, balance,
                                truth)
        outputs = {
            "pool_index": download["pool_index"],
            "pool": manifest["outputs"]["folder"],
            "truth (evaluation only)": truth,
            "samples": manifest["rows"],
            "download vs planted": check,
            "model trained on the raw pool": baseline["train"]["outputs"]["checkpoint"],
            "evaluation": baseline["eval"],
            "zero-shot recall by concept frequency": long_tail,
            "filter report": curated["filters"]["outputs"]["report"],
            "kept by the filters": curated["filters"]["rows"],
            "filters vs planted defects": filter_check,
            "cluster trees": {name: tree["outputs"]["folder"] for name, tree in trees.items()},
            "clusters vs true concepts": cluster_check,
            "subsets": {name: subset["outputs"]["parquet"] for name, subset in subsets.items()},
            "subsets vs true concepts": balance,
            "curation A/B": ab,
        }
    print("demo finished:\n" + json.dumps(outputs, indent=2))
    print("See the runs, task states and artifacts in the Prefect UI: `make ui`, then http://127.0.0.1:4200")
    return outputs


def check_demo(workdir: str, store: str, n_samples: int, seed: int) -> None:
    """What ``main`` checks before Prefect or Dask start: the demo pool's settings (as its generator checks
    them), a working folder that can be made, and a store that takes writes."""
    DemoPoolConfig(**demo_config(n_samples, seed)).validate()
    work = Path(workdir).absolute()
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"workdir {str(work)!r}: cannot be made: {exc.strerror or exc}") from None
    Store(store or str(work / "store")).check_writable()


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.demo", description="Run the demo pipeline on the generated web pool.")
    parser.add_argument("--workdir", default=".demo")
    parser.add_argument("--store", default="")
    parser.add_argument("--n-samples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dask-address", default="", help="existing Dask scheduler; default: a local cluster")
    args = parser.parse_args(argv)
    check_demo(args.workdir, args.store, args.n_samples, args.seed)
    demo(workdir=args.workdir, store=args.store, n_samples=args.n_samples, seed=args.seed,
         dask_address=args.dask_address)


if __name__ == "__main__":
    main()
