"""Benchmark: bring a DataComp pool: import, filters, the CLIP-score baseline and a 4-level tree, with their peers.

    python benchmarks/import_pool.py --rows 1000000 --workers 2 --out benchmarks/results/import_pool.json
    python benchmarks/import_pool.py --quick       # 40,000 rows at small widths: a check of the script

On a synthetic pool in DataComp's metadata layout (:mod:`synthetic_sources`: ``--shards``
parquet + npz pairs, float16 ``l14`` (768) and ``b32`` (512) embeddings, captions around 16
concepts, 3 % exact duplicates), on a fresh ``distributed.LocalCluster`` (``--workers``
processes of one thread, ``--memory-limit`` each) and a fresh local store, the stages a user
runs, timed, with the peak RSS of every process (the scale benchmark's monitor):

1. ``import``: :mod:`tasks.pool_import` as the ``import_pool`` flow runs it (plan: every header;
   the uid check, a shuffle on the workers; one task per shard; the two manifests), without
   Prefect around it. Its peer, ``read_source``: every source shard's parquet columns and its
   ``l14`` arrays read by one task per shard on the same workers, nothing checked or written:
   the floor of any importer. Reported: ``import_samples_per_s`` and import / read.
2. ``filters``: row-wise then pool-wide (DataComp's defaults: basic, NSFW text, exact dedup by
   sha256; pHash is skipped on an imported pool), the run made the pool's latest.
3. ``clip_l14_30``: the subset ``"datacomp:clip_l14_30"`` (the L/14 top 30 %; exact order
   statistic on the workers), no resharding. Its peer, ``clip_l14_30_pandas``: what DataComp's
   own baseline code does, every shard's ``uid`` and ``clip_l14_similarity_score`` read into one
   pandas frame in this process, the top 30 % taken there (``nlargest``, ties in row order, the
   recipe's rule); the two uid sets are compared.
4. ``tree``: :func:`tasks.cluster.run.cluster_pool`, 4 levels as in ``benchmarks/scale.py``
   (N / 100 clusters at level 1 through the automatic split, then 1000 / 100 / 10 at most, 10
   resampling steps), cosine, engine dask.

The source is generated first (timed, not a stage). The last line printed is one JSON object:
``import_samples_per_s``, ``seconds_per_stage``, ``import_over_read`` and
``baseline_over_pandas`` (time ratios against the peers), ``same_subset_as_pandas``,
``peak_rss_gib_largest_process`` per stage, and the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale import ProcessMonitor, stage, tree_levels  # noqa: E402
from benchmarks.synthetic_sources import make_datacomp_pool  # noqa: E402
from tasks.common.catalog import Catalog, EmbeddingRun, PoolRecord  # noqa: E402
from tasks.common.store import Store  # noqa: E402

POOL = "datacomp"


def read_source_shard(shard: dict) -> int:
    """The peer of importing one shard: read its parquet columns and its l14 arrays; nothing else."""
    frame = pd.read_parquet(shard["table"])
    with np.load(shard["image"]) as arrays:
        image, text = arrays["l14_img"], arrays["l14_txt"]
    if not len(image) == len(text) == len(frame):
        raise ValueError(f"{shard['image']}: rows do not align")
    return int(len(frame))


def pandas_clip_l14_30(source: Path, fraction: float = 0.3) -> tuple[np.ndarray, float]:
    """What a pandas user writes: every score and uid in one frame, the top ``fraction`` by ``nlargest``
    (ties at the cutoff taken in row order, as the recipe's exact rule takes them)."""
    frame = pd.concat([pd.read_parquet(path, columns=["uid", "clip_l14_similarity_score"])
                       for path in sorted(source.glob("*.parquet"))], ignore_index=True)
    top = frame.nlargest(int(len(frame) * fraction), "clip_l14_similarity_score", keep="first")
    return np.sort(top["uid"].to_numpy().astype(str)), float(top["clip_l14_similarity_score"].min())


def subset_uids(store: Store, manifest: dict) -> np.ndarray:
    with store.open(store.relative(manifest["outputs"]["parquet"])) as handle:
        return np.sort(pd.read_parquet(handle, columns=["uid"])["uid"].to_numpy().astype(str))


def run(args) -> dict:
    from distributed import Client, LocalCluster

    from tasks.cluster.run import ClusterConfig, cluster_pool
    from tasks.filters.config import FilterConfig
    from tasks.filters.plan import filter_folder, plan_filter
    from tasks.filters.run import poolwide_filters, rowwise_filters
    from tasks.pool_import.run import check_uids, import_shard, plan_import, publish_import
    from tasks.sample.run import SubsetConfig, make_subset

    work = Path(tempfile.mkdtemp(prefix="import-bench-", dir=args.work_dir))
    source = work / "source"
    store = Store(str(work / "store"))
    catalog = Catalog(store)
    result: dict = {"rows": args.rows, "shards": args.shards, "dims": {"l14": args.dim_l14, "b32": args.dim_b32},
                    "workers": args.workers, "memory_limit": args.memory_limit, "stages": {}}
    stages = result["stages"]
    try:
        started = time.perf_counter()
        make_datacomp_pool(str(source), shards=args.shards, rows_per_shard=args.rows // args.shards, seed=args.seed,
                           dim_l14=args.dim_l14, dim_b32=args.dim_b32, exact_duplicates=0.03)
        result["generate_seconds"] = round(time.perf_counter() - started, 1)
        result["source_gib"] = round(sum(f.stat().st_size for f in source.iterdir()) / 2**30, 2)
        print(f"source: {args.rows:,} rows in {args.shards} shards, {result['source_gib']} GiB, "
              f"{result['generate_seconds']} s", flush=True)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=args.memory_limit, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client, ProcessMonitor(args.interval) as monitor:
            monitor.name_workers(client)
            plan = None
            with stage(stages, "read_source", monitor, client) as entry:
                shards = [{"table": str(p), "image": str(p.with_suffix(".npz"))}
                          for p in sorted(source.glob("*.parquet"))]
                entry["rows"] = sum(client.gather(client.map(read_source_shard, shards, pure=False)))
            with stage(stages, "import", monitor, client) as entry:
                plan = plan_import(catalog, POOL, str(source), "datacomp", "l14")
                check_uids(store, plan, client)
                settings = {name: plan[name] for name in ("pool", "format", "embeddings", "dim", "folder")}
                summaries = client.gather([client.submit(import_shard, store, settings, shard, pure=False)
                                           for shard in plan["shards"]])
                published = publish_import(catalog, plan, summaries)
                entry["rows"] = published["pool"]["rows"]["success"]
            with stage(stages, "filters", monitor, client, needs=("import",)) as entry:
                if entry is not None:
                    embeddings = published["embeddings"]
                    config = FilterConfig()
                    filter_plan = plan_filter(catalog, PoolRecord(POOL, published["pool"]), embeddings, config.to_dict())
                    folder = filter_folder(catalog, filter_plan, embeddings)
                    futures = {s.shard_id: client.submit(rowwise_filters, store, s, config,
                                                         catalog.filter_rows(folder, s.shard_id), pure=False)
                               for s in EmbeddingRun(embeddings).shards}
                    rows_files = dict(zip(futures, client.gather(list(futures.values()))))
                    inputs = {"embeddings": embeddings["content_hash"],
                              "pool_manifest": published["pool"]["content_hash"], "eval_tasklist": ""}
                    filters = poolwide_filters(catalog, EmbeddingRun(embeddings), rows_files, config, folder, inputs,
                                               client=client)
                    catalog.set_latest_runs(POOL, embeddings, filters)
                    entry["kept"] = filters["rows"]["kept"]
                    entry["skipped_filters"] = filters["stats"].get("skipped")
                    entry["seconds_per_filter"] = filters["stats"].get("seconds")
            ours = None
            with stage(stages, "clip_l14_30", monitor, client, needs=("filters",)) as entry:
                if entry is not None:
                    snapshot = catalog.snapshot(POOL)
                    config = SubsetConfig.from_dict({"recipe": "datacomp:clip_l14_30", "reshard": False})
                    manifest = make_subset(catalog, snapshot, "clip-l14-30", config, {}, client=client)
                    entry["subset"] = manifest["rows"]
                    ours = subset_uids(store, manifest)
            with stage(stages, "clip_l14_30_pandas", monitor, client) as entry:
                theirs, threshold = pandas_clip_l14_30(source)
                entry["kept"], entry["threshold"] = int(len(theirs)), threshold
            if ours is not None:
                result["same_subset_as_pandas"] = bool(np.array_equal(ours, theirs))
                result["subset_sizes"] = {"ours": int(len(ours)), "pandas": int(len(theirs))}
            with stage(stages, "tree", monitor, client, needs=("filters",)) as entry:
                if entry is not None:
                    levels = tree_levels(args.rows, 0)
                    clustering = ClusterConfig.from_dict({"levels": levels, "metric": "cosine", "engine": "dask",
                                                          "max_iter": args.max_iter, "seed": args.seed})
                    tree = cluster_pool(catalog, catalog.snapshot(POOL), clustering, client=client)
                    entry["level_k"] = [level["k"] for level in tree["stats"]["levels"]]
                    entry["tree_samples"] = tree["rows"]["samples"]
    finally:
        result["store_gib"] = round(sum(f.stat().st_size for f in (work / "store").rglob("*") if f.is_file())
                                    / 2**30, 2)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def summary(result: dict) -> dict:
    stages = result["stages"]
    seconds = {name: entry.get("seconds") for name, entry in stages.items()}

    def ratio(a: str, b: str):
        if stages.get(a, {}).get("ok") and stages.get(b, {}).get("ok") and stages[b]["seconds"]:
            return round(stages[a]["seconds"] / stages[b]["seconds"], 2)
        return None

    imported = stages.get("import", {})
    return {"rows": result["rows"],
            "import_samples_per_s": round(result["rows"] / imported["seconds"], 1) if imported.get("ok") else None,
            "seconds_per_stage": seconds, "import_over_read": ratio("import", "read_source"),
            "baseline_over_pandas": ratio("clip_l14_30", "clip_l14_30_pandas"),
            "same_subset_as_pandas": result.get("same_subset_as_pandas"),
            "peak_rss_gib_largest_process": {name: entry.get("peak_rss_gib_largest_process")
                                             for name, entry in stages.items()},
            "failed": {name: entry["error"][:300] for name, entry in stages.items() if entry.get("error")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--dim-l14", type=int, default=768)
    parser.add_argument("--dim-b32", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="4GiB")
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--work-dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--quick", action="store_true", help="40,000 rows, widths 64 and 32, 4 shards")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.shards, args.dim_l14, args.dim_b32 = 40_000, 4, 64, 32
    result = run(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(summary(result)))


if __name__ == "__main__":
    main()
