"""Benchmark: time and peak memory of every curation stage at growing pool sizes, their growth, and dedup recall.

    python benchmarks/scale.py --sizes 1000000 3000000 10000000 --workers 2 --out benchmarks/results/scale.json
    python benchmarks/scale.py --quick        # sizes 20,000 50,000 100,000: a check of the script (minutes)

For each size N, on a fresh ``distributed.LocalCluster`` (``--workers`` worker processes,
``threads_per_worker=1``, ``processes=True``, ``--memory-limit`` per worker, Dask's default
spill/pause/terminate fractions 0.6/0.7/0.8/0.95 of it) and a fresh store under ``--work-dir``:

0. ``generate``: a synthetic pool of N samples (:mod:`synthetic_pool`, one task per shard of
   ``--shard-size`` on the workers): what download + embed would leave, with 3 % exact and 3 %
   near duplicates planted across shards. Timed and reported (samples per second) but it is not
   a stage of the pipeline. Its planted pairs go to ``<out stem>.truth/<N>.parquet`` next to
   ``--out``, never into the store's stage folders.
1. ``rowwise_filters``: :func:`tasks.filters.run.rowwise_filters`, one task per shard (basic
   filter with langid, NSFW terms; no NSFW image head configured, no evaluation sets).
2. ``poolwide_filters``: :func:`tasks.filters.run.poolwide_filters` with ``client=`` when it
   takes one (else called without, and the result says so): exact dedup, pHash dedup (4 bits,
   colour distance 8), SemDeDup (``--semdedup-threshold``, default 0.97), CLIP score top
   fraction 0.3; then the run is made the pool's latest and the snapshot resolved.
3. ``cluster_tree``: :func:`tasks.cluster.run.cluster_pool`, 4 levels, metric cosine, engine
   dask, ``--max-iter`` Lloyd iterations: level 1 asks for k = N / 100 clusters, which the engine
   runs as its automatic recursive split from k = 4096 (``--level1-split S`` instead asks for
   ``N / 100 / S`` coarse clusters each split into S), then k = min(1000, k1 / 10),
   min(100, k2 / 10), min(10, k3 / 10), each with 10 resampling steps.
4. ``hkmeans_subset``: :func:`tasks.sample.run.make_subset`, recipe filters then hkmeans
   (half of the kept samples), reshard off.
5. ``metaclip_subset``: the same with filters then MetaCLIP (metadata built from WordNet and the
   pool, ``tail_share`` 0.06), reshard off.

Per stage: wall seconds, and the peak RSS of every process (this driver, every worker, every
nanny), sampled with psutil every ``--interval`` seconds by a thread of the driver (a spike
shorter than the interval can be missed; each worker's and the driver's own high-water mark
since it started, ``getrusage``, is recorded after each stage as a check); the largest single
process and the largest sum. A stage that fails records its error and the next ones that need
its output are skipped; nothing is estimated.

Growth exponent per stage ``log(t2 / t1) / log(n2 / n1)`` between consecutive sizes and between
the smallest and the largest. Recall (not timed as a stage): of the planted near duplicates, the
share the pool-wide pHash dedup put in one group (both uids kept in one group, or one pointing to
the other), over the whole pool; on a small pool of ``--recall-sample`` samples (up to a quarter
of them pairs of planted near duplicates, the rest random samples, read back from the store),
the same share for the pool-wide run and for the all-pairs method
(:func:`tasks.filters.dedup.hamming_pairs`, every pair compared, with the same colour check);
``phash_recall_vs_all_pairs`` = pool-wide / all-pairs on that small pool. Also the exact-dedup
recall of the exact pairs and the share of planted pairs SemDeDup marked.

The full results per size go to ``--out`` (rewritten after every size); the last line printed
is one JSON object: ``seconds_<largest N>`` per stage (``seconds_10m`` when 10M ran),
``peak_rss_gib_<largest N>`` (the largest single process over its stages), ``time_exponent_max``
(the largest smallest-to-largest exponent over the stages) and ``phash_recall_vs_all_pairs``.
Disk: about 2.3 GB of store per million samples at 512 dimensions (``--keep`` keeps the stores).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_pool import check_embedding_folder, make_synthetic_pool  # noqa: E402 - benchmarks/, next to this

from tasks.common.catalog import Catalog, EmbeddingRun  # noqa: E402
from tasks.common.store import Store  # noqa: E402

GIB = 1024 ** 3
STAGES = ("rowwise_filters", "poolwide_filters", "cluster_tree", "hkmeans_subset", "metaclip_subset")
POOL = "synthetic"


def size_label(n: int) -> str:
    for unit, suffix in ((1_000_000_000, "b"), (1_000_000, "m"), (1_000, "k")):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# ----- memory of every process -------------------------------------------------------------------
class ProcessMonitor:
    """Samples the RSS of this process and all its descendants (nannies, workers) in a thread."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.psutil = psutil
        self.me = psutil.Process()
        self.interval = interval
        self.names: dict[int, str] = {self.me.pid: "driver"}
        self.peaks: dict[int, int] = {}
        self.peak_total = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def name_workers(self, client) -> None:
        """Label the worker processes by their address (a restarted worker shows up under its new pid)."""
        for address, pid in client.run(os.getpid).items():
            self.names[pid] = f"worker {address.rsplit(':', 1)[-1]}"

    def _name(self, proc) -> str:
        if proc.pid in self.names:
            return self.names[proc.pid]
        try:
            parent = proc.ppid()
        except self.psutil.Error:
            parent = None
        role = "child" if parent == self.me.pid else "worker"
        return f"{role} (pid {proc.pid})"

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = 0
        seen = {}
        for proc in [self.me] + self.me.children(recursive=True):
            try:
                seen[proc.pid] = proc.memory_info().rss
            except self.psutil.Error:  # a process that just exited
                continue
            total += seen[proc.pid]
            if proc.pid not in self.names:
                self.names[proc.pid] = self._name(proc)
        with self._lock:
            for pid, rss in seen.items():
                self.peaks[pid] = max(self.peaks.get(pid, 0), rss)
            self.peak_total = max(self.peak_total, total)

    def reset(self) -> None:
        with self._lock:
            self.peaks, self.peak_total = {}, 0
        self.sample()

    def report(self) -> dict:
        self.sample()
        with self._lock:
            per_process = {self.names.get(pid, str(pid)): round(rss / GIB, 3)
                           for pid, rss in sorted(self.peaks.items(), key=lambda kv: -kv[1])}
            largest = max(self.peaks.values(), default=0)
            total = self.peak_total
        return {"peak_rss_gib_per_process": per_process, "peak_rss_gib_largest_process": round(largest / GIB, 3),
                "peak_rss_gib_all_processes": round(total / GIB, 3)}

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def high_water_marks(client) -> dict:
    """Each worker's and the driver's own peak RSS since it started (getrusage), in GiB."""
    marks = {"driver": round(_max_rss_bytes() / GIB, 3)}
    try:
        for address, value in client.run(_max_rss_bytes).items():
            marks[f"worker {address.rsplit(':', 1)[-1]}"] = round(value / GIB, 3)
    except Exception as exc:  # noqa: BLE001 - a dead worker: say so, keep measuring
        marks["error"] = f"{type(exc).__name__}: {exc}"
    return marks


@contextmanager
def stage(results: dict, name: str, monitor: ProcessMonitor, client, needs: tuple[str, ...] = ()):
    """Time one stage and record its memory; on failure record the error and carry on."""
    missing = [n for n in needs if not results.get(n, {}).get("ok")]
    entry: dict = {"ok": False}
    results[name] = entry
    if missing:
        entry["skipped"] = f"needs {missing}, which did not finish"
        print(f"  {name}: skipped ({entry['skipped']})", flush=True)
        yield None
        return
    monitor.reset()
    entry["load_average_before"] = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    try:
        yield entry
        entry["ok"] = True
    except Exception as exc:  # noqa: BLE001 - a failing stage is a result, not the end of the benchmark
        entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        entry["traceback"] = traceback.format_exc()[-4000:]
    entry["seconds"] = round(time.perf_counter() - started, 2)
    entry["load_average_after"] = round(os.getloadavg()[0], 2)  # other users' work on the machine shows here
    entry.update(monitor.report())
    entry["high_water_rss_gib_since_start"] = high_water_marks(client)
    status = "ok" if entry["ok"] else f"FAILED: {entry['error'][:300]}"
    print(f"  {name}: {entry['seconds']:.1f} s, largest process {entry['peak_rss_gib_largest_process']:.2f} GiB, "
          f"all processes {entry['peak_rss_gib_all_processes']:.2f} GiB; {status}", flush=True)


# ----- the stages' settings ----------------------------------------------------------------------
def filter_config(args):
    from tasks.filters.config import FilterConfig

    config = FilterConfig(exact_dedup=True, phash_dedup=True, semdedup_threshold=args.semdedup_threshold,
                          clip_score_top_fraction=args.clip_top_fraction)
    config.validate()
    return config


def tree_levels(n: int, split: int) -> list[dict]:
    """4 levels: N / 100 clusters at level 1 (coarse x split, or one k-means), then 1000 / 100 / 10 at most."""
    k1 = max(2, n // 100)
    level1 = {"k": max(1, k1 // split), "split": split} if split else {"k": k1}
    k2 = max(2, min(1000, k1 // 10))
    k3 = max(2, min(100, k2 // 10))
    k4 = max(1, min(10, k3 // 10))
    return [level1] + [{"k": k, "resampling_steps": 10} for k in (k2, k3, k4)]


# ----- recall ------------------------------------------------------------------------------------
def _rows_of(store: Store, parquet_uri: str, positions: np.ndarray, columns: list[str]) -> pd.DataFrame:
    with store.open(store.relative(parquet_uri)) as handle:
        frame = pd.read_parquet(handle, columns=columns)
    return frame.iloc[positions].reset_index(drop=True)


def _decisions_of(store: Store, decisions_uri: str, uids: np.ndarray) -> pd.DataFrame:
    import pyarrow.parquet as pq

    with store.open(store.relative(decisions_uri)) as handle:
        names = pq.read_schema(handle).names
    wanted = [c for c in names if c == "uid" or c.startswith(("duplicate_of_", "keep_", "reason_"))]
    with store.open(store.relative(decisions_uri)) as handle:
        frame = pd.read_parquet(handle, columns=wanted)
    return frame[frame["uid"].isin(set(uids))].reset_index(drop=True)


def pair_decisions(client, store: Store, filters: dict, truth: pd.DataFrame, shard_ids: list[str]) -> pd.DataFrame:
    """The pool-wide decisions of every sample in a planted pair (one task per shard), indexed by uid."""
    decisions = filters["outputs"]["decisions"]
    wanted: dict[int, list] = {}
    for uid_column, shard_column in (("copy_uid", "copy_shard"), ("source_uid", "source_shard")):
        for shard, uids in truth.groupby(shard_column)[uid_column]:
            wanted.setdefault(int(shard), []).append(uids.to_numpy())
    futures = [client.submit(_decisions_of, store, decisions[shard_ids[shard]], np.concatenate(parts), pure=False)
               for shard, parts in sorted(wanted.items())]
    return pd.concat(client.gather(futures), ignore_index=True).set_index("uid")


def found_together(frame: pd.DataFrame, a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray | None:
    """Whether the pairs (a, b) of uids ended in one group of filter ``name`` (None: no such column)."""
    column = f"duplicate_of_{name}"
    if column not in frame:
        return None
    pointer = frame[column].fillna("").astype(str)
    left, right = pointer.reindex(a).fillna("").to_numpy(), pointer.reindex(b).fillna("").to_numpy()
    group_a, group_b = np.where(left != "", left, a), np.where(right != "", right, b)
    return (group_a == group_b) | (left == b) | (right == a)


def all_pairs_together(uid: np.ndarray, phash: np.ndarray, thumbs: np.ndarray, valid: np.ndarray, max_distance: int,
                       max_color: float | None, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The all-pairs method on a small pool: every pair within ``max_distance`` bits (and colour), grouped."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from tasks.filters.dedup import hamming_pairs

    positions = np.flatnonzero(valid)
    i, j = hamming_pairs(phash[positions], max_distance)
    if max_color is not None and len(i):
        colour = np.abs(thumbs[positions[i]].astype(np.int16) - thumbs[positions[j]].astype(np.int16)).mean(axis=1)
        i, j = i[colour <= max_color], j[colour <= max_color]
    n = len(uid)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (positions[i], positions[j])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    label = pd.Series(labels, index=uid)
    return label.reindex(a).to_numpy() == label.reindex(b).to_numpy()


def measure_recall(client, store: Store, synthetic, filters: dict, config, sample_size: int, seed: int) -> dict:
    truth = synthetic.truth
    embedded = EmbeddingRun(synthetic.embeddings).shards
    shard_ids = [s.shard_id for s in embedded]
    frame = pair_decisions(client, store, filters, truth, shard_ids)
    out: dict = {"decision_columns": sorted(c for c in frame.columns if c.startswith("duplicate_of_"))}
    near, exact = truth[truth["kind"] == "near"], truth[truth["kind"] == "exact"]
    for label, pairs, name in (("phash_recall", near, "phash_dedup"),
                               ("phash_recall_exact_pairs", exact, "phash_dedup"),
                               ("exact_dedup_recall", exact, "exact_dedup")):
        together = found_together(frame, pairs["copy_uid"].to_numpy(), pairs["source_uid"].to_numpy(), name)
        out[label] = None if together is None or not len(pairs) else round(float(together.mean()), 5)
    if "keep_semdedup" in frame:
        keep = frame["keep_semdedup"].astype(bool)
        for label, pairs in (("semdedup_marked_near_pairs", near), ("semdedup_marked_exact_pairs", exact)):
            marked = ~(keep.reindex(pairs["copy_uid"]).fillna(True).to_numpy(dtype=bool)
                       & keep.reindex(pairs["source_uid"]).fillna(True).to_numpy(dtype=bool))
            out[label] = round(float(marked.mean()), 5) if len(pairs) else None

    # the small pool: up to a quarter of it planted near pairs (both members), the rest random samples
    rng = np.random.default_rng([seed, 99])
    n, shard_size = synthetic.spec.n, synthetic.spec.shard_size
    sample_size = min(sample_size, n)
    chosen_pairs = near.iloc[np.sort(rng.choice(len(near), size=min(len(near), sample_size // 4), replace=False))]
    paired_rows = np.concatenate([chosen_pairs["copy_row"].to_numpy(), chosen_pairs["source_row"].to_numpy()])
    others = np.setdiff1d(rng.choice(n, size=min(n, 2 * sample_size), replace=False), paired_rows)
    rows = np.sort(np.concatenate([paired_rows, others[:max(0, sample_size - len(paired_rows))]]))
    futures = [client.submit(_rows_of, store, embedded[shard].parquet, rows[rows // shard_size == shard] % shard_size,
                             ["uid", "phash", "thumb", "embed_reason"], pure=False)
               for shard in np.unique(rows // shard_size)]
    small = pd.concat(client.gather(futures), ignore_index=True)
    a, b = chosen_pairs["copy_uid"].to_numpy(), chosen_pairs["source_uid"].to_numpy()
    thumbs = np.frombuffer(b"".join(small["thumb"]), dtype=np.uint8).reshape(len(small), -1)
    started = time.perf_counter()
    all_pairs = all_pairs_together(small["uid"].to_numpy(), small["phash"].to_numpy(), thumbs,
                                   (small["embed_reason"] != "undecodable").to_numpy(), config.phash_max_distance,
                                   config.phash_max_color_distance, a, b)
    all_pairs_seconds = time.perf_counter() - started
    poolwide = found_together(frame, a, b, "phash_dedup")
    out.update({"small_pool_samples": int(len(small)), "small_pool_near_pairs": int(len(chosen_pairs)),
                "small_pool_all_pairs_seconds": round(all_pairs_seconds, 2),
                "small_pool_all_pairs_recall": round(float(all_pairs.mean()), 5) if len(a) else None,
                "small_pool_poolwide_recall": round(float(poolwide.mean()), 5)
                if poolwide is not None and len(a) else None})
    if out["small_pool_poolwide_recall"] is not None and out["small_pool_all_pairs_recall"]:
        out["phash_recall_vs_all_pairs"] = round(out["small_pool_poolwide_recall"] / out["small_pool_all_pairs_recall"],
                                                 5)
    else:
        out["phash_recall_vs_all_pairs"] = None
    return out


# ----- one size ----------------------------------------------------------------------------------
def run_size(n: int, args, truth_folder: Path) -> dict:
    from distributed import Client, LocalCluster

    from tasks.cluster.run import ClusterConfig, cluster_pool
    from tasks.filters.plan import filter_folder
    from tasks.filters.run import poolwide_filters, rowwise_filters
    from tasks.sample.run import SubsetConfig, make_subset

    work = Path(tempfile.mkdtemp(prefix=f"scale-{size_label(n)}-", dir=args.work_dir))
    store = Store(str(work / "store"))
    catalog = Catalog(store)
    result: dict = {"n": n, "store": store.root, "stages": {}}
    stages = result["stages"]
    print(f"N = {n:,}: store {store.root}", flush=True)
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                          memory_limit=args.memory_limit, silence_logs=logging.ERROR) as cluster, \
                Client(cluster) as client, ProcessMonitor(args.interval) as monitor:
            monitor.name_workers(client)
            synthetic = None
            with stage(stages, "generate", monitor, client) as entry:
                synthetic = make_synthetic_pool(catalog, POOL, n, shard_size=args.shard_size, dim=args.dim,
                                                seed=args.seed, client=client)
                entry["samples_per_second"] = round(synthetic.samples_per_second, 1)
                entry["pool"] = synthetic.stats
            if synthetic is not None and stages["generate"]["ok"]:
                try:
                    check_embedding_folder(catalog, synthetic)
                    result["embedding_folder_check"] = "ok: the embed-and-filter plan names this folder"
                except Exception as exc:  # noqa: BLE001
                    result["embedding_folder_check"] = f"{type(exc).__name__}: {exc}"
                truth_file = truth_folder / f"{n}.parquet"
                truth_folder.mkdir(parents=True, exist_ok=True)
                synthetic.truth.to_parquet(truth_file, index=False)
                result["truth_file"] = str(truth_file)
            config = filter_config(args)
            embeddings = synthetic.embeddings if synthetic is not None else None
            rows_files: dict = {}
            folder = None
            with stage(stages, "rowwise_filters", monitor, client, needs=("generate",)) as entry:
                if entry is not None:
                    plan = {"pool": synthetic.pool, "config": config.to_dict(), "tasklist_hash": ""}
                    folder = filter_folder(catalog, plan, embeddings)
                    shards = EmbeddingRun(embeddings).shards
                    futures = {s.shard_id: client.submit(rowwise_filters, store, s, config,
                                                         catalog.filter_rows(folder, s.shard_id), pure=False)
                               for s in shards}
                    rows_files = dict(zip(futures, client.gather(list(futures.values()))))
                    entry["shards"] = len(rows_files)
            filters = None
            with stage(stages, "poolwide_filters", monitor, client, needs=("rowwise_filters",)) as entry:
                if entry is not None:
                    inputs = {"embeddings": embeddings["content_hash"], "pool_manifest": synthetic.pool["content_hash"],
                              "eval_tasklist": ""}
                    takes_client = "client" in inspect.signature(poolwide_filters).parameters
                    entry["called_with_client"] = takes_client
                    if takes_client:
                        filters = poolwide_filters(catalog, EmbeddingRun(embeddings), rows_files, config, folder,
                                                   inputs, client=client)
                    else:
                        filters = poolwide_filters(catalog, EmbeddingRun(embeddings), rows_files, config, folder,
                                                   inputs)
                    entry["kept"] = filters["rows"]["kept"]
                    entry["removed_by"] = filters["stats"].get("removed_by")
                    entry["skipped_filters"] = filters["stats"].get("skipped")
                    entry["seconds_per_filter"] = filters["stats"].get("seconds")
                    print(f"  poolwide_filters seconds per filter: {entry['seconds_per_filter']}", flush=True)
            snapshot = None
            if filters is not None:
                catalog.set_latest_runs(POOL, embeddings, filters)
                snapshot = catalog.snapshot(POOL)
            tree = None
            with stage(stages, "cluster_tree", monitor, client, needs=("poolwide_filters",)) as entry:
                if entry is not None:
                    levels = tree_levels(n, args.level1_split)
                    entry["levels"] = levels
                    clustering = ClusterConfig.from_dict({"levels": levels, "metric": "cosine", "engine": "dask",
                                                          "max_iter": args.max_iter, "seed": args.seed})
                    tree = cluster_pool(catalog, snapshot, clustering, client=client)
                    entry["level_k"] = [level["k"] for level in tree["stats"]["levels"]]
                    entry["tree_samples"] = tree["rows"]["samples"]
            with stage(stages, "hkmeans_subset", monitor, client, needs=("cluster_tree",)) as entry:
                if entry is not None:
                    target = max(1, tree["rows"]["samples"] // 2)
                    subset = SubsetConfig.from_dict({"recipe": [{"step": "filters"},
                                                                {"step": "hkmeans", "target": target}],
                                                     "reshard": False})
                    manifest = make_subset(catalog, snapshot, "hkmeans", subset, {"tree": tree}, client=client)
                    entry["subset"] = manifest["rows"]
            with stage(stages, "metaclip_subset", monitor, client, needs=("poolwide_filters",)) as entry:
                if entry is not None:
                    subset = SubsetConfig.from_dict({"recipe": [{"step": "filters"},
                                                                {"step": "metaclip", "tail_share": 0.06}],
                                                     "reshard": False})
                    manifest = make_subset(catalog, snapshot, "metaclip", subset, {}, client=client)
                    entry["subset"] = manifest["rows"]
            if filters is not None:
                started = time.perf_counter()
                try:
                    result["recall"] = measure_recall(client, store, synthetic, filters, config, args.recall_sample,
                                                      args.seed)
                except Exception as exc:  # noqa: BLE001
                    result["recall"] = {"error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc()[-3000:]}
                result["recall"]["seconds"] = round(time.perf_counter() - started, 1)
                print(f"  recall: {json.dumps({k: v for k, v in result['recall'].items() if k != 'traceback'})}",
                      flush=True)
    finally:
        result["store_gib"] = round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / GIB, 2)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def exponents(results: list[dict]) -> dict:
    """Per stage: log(t2/t1) / log(n2/n1) between consecutive sizes, and between the smallest and largest."""
    out = {}
    for name in ("generate",) + STAGES:
        points = [(r["n"], r["stages"][name]["seconds"]) for r in results
                  if r["stages"].get(name, {}).get("ok") and r["stages"][name]["seconds"] > 0]
        if len(points) < 2:
            out[name] = {"consecutive": [], "smallest_to_largest": None}
            continue
        consecutive = [round(math.log(t2 / t1) / math.log(n2 / n1), 3)
                       for (n1, t1), (n2, t2) in zip(points, points[1:])]
        (n1, t1), (n2, t2) = points[0], points[-1]
        out[name] = {"sizes": [p[0] for p in points], "consecutive": consecutive,
                     "smallest_to_largest": round(math.log(t2 / t1) / math.log(n2 / n1), 3)}
    return out


def summary(results: list[dict], growth: dict, args) -> dict:
    largest = results[-1]
    label = size_label(largest["n"])
    stages = largest["stages"]
    per_stage = {name: (stages[name]["seconds"] if stages.get(name, {}).get("ok") else None) for name in STAGES}
    failed = {name: stages[name].get("error") or stages[name].get("skipped")
              for name in STAGES if not stages.get(name, {}).get("ok")}
    largest_rss = max((stages[name].get("peak_rss_gib_largest_process", 0) for name in STAGES if name in stages
                       and "peak_rss_gib_largest_process" in stages[name]), default=None)
    exps = {name: growth[name]["smallest_to_largest"] for name in STAGES
            if growth.get(name, {}).get("smallest_to_largest") is not None}
    recall = largest.get("recall", {})
    return {"benchmark": "scale", "sizes": [r["n"] for r in results], "largest": largest["n"],
            "workers": args.workers, "memory_limit_per_worker": args.memory_limit, "shard_size": args.shard_size,
            "dim": args.dim, f"seconds_{label}": per_stage, f"peak_rss_gib_{label}": largest_rss,
            "failed_stages": failed,
            "time_exponent_max": max(exps.values()) if exps else None,
            "time_exponent_max_stage": max(exps, key=exps.get) if exps else None,
            "time_exponents": exps,
            "phash_recall_vs_all_pairs": recall.get("phash_recall_vs_all_pairs"),
            "phash_recall": recall.get("phash_recall"),
            "generate_samples_per_second": stages.get("generate", {}).get("samples_per_second")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 3_000_000, 10_000_000])
    parser.add_argument("--quick", action="store_true", help="sizes 20,000 50,000 100,000 (a check of the script)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="6GiB", help="per worker process (Dask's memory_limit)")
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--semdedup-threshold", type=float, default=0.97)
    parser.add_argument("--clip-top-fraction", type=float, default=0.3)
    parser.add_argument("--max-iter", type=int, default=20, help="Lloyd iterations per k-means of the tree")
    parser.add_argument("--level1-split", type=int, default=0,
                        help="level 1 = N/100/split coarse clusters, each split in this many; 0: k = N/100 as the "
                             "engine runs it (its automatic recursive split from k = 4096)")
    parser.add_argument("--recall-sample", type=int, default=20_000)
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between memory samples")
    parser.add_argument("--work-dir", default=os.environ.get("BENCH_DIR"), help="where the stores go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep each size's store")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "scale.json"))
    args = parser.parse_args(argv)
    sizes = sorted(set([20_000, 50_000, 100_000] if args.quick else args.sizes))
    out = Path(args.out)
    truth_folder = out.with_suffix(".truth")
    logging.getLogger("distributed").setLevel(logging.ERROR)

    results = []
    for n in sizes:
        results.append(run_size(n, args, truth_folder))
        growth = exponents(results)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "sizes": results, "exponents": growth,
                                   "summary": summary(results, growth, args)}, indent=1, default=str) + "\n")
    growth = exponents(results)
    for name, values in growth.items():
        print(f"growth exponent {name}: consecutive {values['consecutive']}, "
              f"smallest to largest {values['smallest_to_largest']}")
    print(json.dumps(summary(results, growth, args)))


if __name__ == "__main__":
    main()
