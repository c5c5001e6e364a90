"""Prefect tasks of the demo pool: generate the web root, write the index, check the download.

The truth file is read only by :func:`check_download_against_truth`, an evaluation step.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.common.dask_cluster import dask_client
from tasks.demo_pool.eval_sets import generate_eval_sets
from tasks.evaluate.by_frequency import recall_by_frequency
from tasks.evaluate.filter_truth import filter_precision_recall
from tasks.demo_pool.generate import DemoPoolConfig, generate_demo_pool, pool_index_for
from tasks.demo_pool.server import DemoWebServer


@task(name="generate_demo_pool")
def generate_demo_pool_task(web_root: str, config: dict, dask_address: str | None = None) -> dict:
    """Render the demo web root on a Dask cluster (local unless ``dask_address`` names a scheduler)."""
    with dask_client(dask_address, gpu=False) as client:
        summary = generate_demo_pool(DemoPoolConfig(**config), web_root, client=client)
    get_run_logger().info("demo web root %s: %d samples, planted %s", web_root, summary["n_samples"],
                          summary["planted"])
    return summary


@task(name="write_demo_pool_index")
def write_demo_pool_index(web_root: str, base_url: str, index_path: str) -> str:
    """Write the pool index for the running server (unchanged bytes if the URLs are the same)."""
    data = pool_index_for(web_root, base_url).to_parquet(index=False)
    target = Path(index_path)
    if not target.exists() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return str(target)


def start_demo_server(web_root: str, state_file: str, hang_seconds: float = 60.0) -> DemoWebServer:
    """Serve ``web_root``; reuse the port of the last run when it is free, so the URLs (and caches) hold."""
    state = Path(state_file)
    port = json.loads(state.read_text()).get("port", 0) if state.exists() else 0
    try:
        server = DemoWebServer(web_root, port=port, hang_seconds=hang_seconds)
    except OSError:
        server = DemoWebServer(web_root, port=0, hang_seconds=hang_seconds)
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text(json.dumps({"port": server.port}))
    return server.start()


@task(name="check_download_against_truth")
def check_download_against_truth(manifest: dict, truth_path: str) -> list[dict]:
    """Planted failures against what the download reported, per status and reason (an artifact)."""
    truth = pd.read_parquet(truth_path)
    reasons = manifest["stats"]["reason_counts"]
    rows = [{"status": "success", "reason": "(all)", "planted": int((truth["expected_status"] == "success").sum()),
             "downloaded": int(manifest["rows"].get("success", 0))}]
    for failure, status in (("http_404", "failed_to_download"), ("timeout", "failed_to_download"),
                            ("truncated", "failed_to_download"), ("not_an_image", "failed_to_resize")):
        rows.append({"status": status, "reason": failure, "planted": int((truth["url_failure"] == failure).sum()),
                     "downloaded": int(reasons.get(status, {}).get(failure, 0))})
    create_table_artifact(key="demo-download-vs-truth", table=rows,
                          description="Planted URL failures in the demo pool against the download's report.")
    return rows


@task(name="generate_demo_eval_sets")
def generate_demo_eval_sets_task(folder: str, seed: int) -> str:
    """Held-out, balanced evaluation sets; returns the task list path."""
    return generate_eval_sets(folder, seed=seed)


@task(name="long_tail_report")
def long_tail_report(results_uri: str, truth_path: str, manifest: dict) -> dict:
    """Zero-shot recall per concept against the concept's count among the downloaded training samples.

    An evaluation step: it reads the truth file (true concepts) and the shard parquets (which
    samples were downloaded).
    """
    import fsspec

    with fsspec.open(f"{results_uri}/results.jsonl", "r") as handle:
        lines = [json.loads(line) for line in handle if line.strip()]
    concepts = next(line for line in reversed(lines) if line["key"] == "demo/concepts")
    downloaded = set()
    for shard in manifest["outputs"]["shards"]:
        with fsspec.open(shard["parquet"], "rb") as handle:
            meta = pd.read_parquet(handle, columns=["uid", "status"])
        downloaded.update(meta.loc[meta["status"] == "success", "uid"])
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    counts = np.bincount(truth.loc[truth["uid"].isin(downloaded), "concept_id"],
                         minlength=len(concepts["metrics"]["per_class_recall"]))
    report = recall_by_frequency(concepts["metrics"]["per_class_recall"], counts)
    create_table_artifact(key="demo-long-tail", table=report["groups"],
                          description="Zero-shot recall of the model trained on the raw pool, by how often "
                                      f"the concept occurs in it (Spearman {report['spearman_count_vs_recall']}).")
    return report


# The demo's filter settings: DataComp's, except the minimum image side (the demo's images are
# 64-192 px; its planted too-small ones 16-40 px) and the eval-set dedup threshold: the tiny
# model's image embeddings all lie within a narrow cone (any two demo images have a cosine of
# about 0.99), so only copies of an evaluation image reach 0.9995.
# SemDeDup's threshold is the same for the same reason (0.9995: precision 0.85, recall 0.79 of the
# planted exact and near copies; 0.999: 0.57 and 0.81).
DEMO_FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.8, "eval_dedup_threshold": 0.9995,
                "semdedup_threshold": 0.9995}


@task(name="check_filters_against_truth")
def check_filters_against_truth(filters_manifest: dict, truth_path: str) -> list[dict]:
    """Precision and recall of each filter against the defects the generator planted (an artifact)."""
    import fsspec

    frames = []
    for uri in filters_manifest["outputs"]["decisions"]:
        with fsspec.open(uri, "rb") as handle:
            frames.append(pd.read_parquet(handle))
    rows = filter_precision_recall(pd.concat(frames, ignore_index=True), pd.read_parquet(truth_path))
    create_table_artifact(key="demo-filters-vs-truth", table=rows,
                          description="Each filter against the defects the demo generator planted.")
    return rows


def demo_trees(kept: int) -> dict[str, dict]:
    """The demo's two trees over the ``kept`` filtered samples, with the same number of top clusters.

    One level of k-means against four levels with resampling (the paper's recipe scaled down:
    1000 / 400 / 200 / 100 clusters for the default pool's ~11,000 kept samples, as many top
    clusters as concepts; smaller pools get proportionally fewer).
    """
    top = min(100, max(2, kept // 20), kept)
    k1 = min(10 * top, kept)
    k2 = min(4 * top, k1)
    k3 = min(2 * top, k2)
    return {"1 level": {"levels": [top]},
            "4 levels, resampling": {"levels": [k1, {"k": k2, "resampling_steps": 10},
                                                {"k": k3, "resampling_steps": 10},
                                                {"k": min(top, k3), "resampling_steps": 10}]}}


@task(name="check_clusters_against_truth")
def check_clusters_against_truth(trees: dict[str, dict], truth_path: str, store: str) -> list[dict]:
    """How evenly each tree's top clusters spread over the true concepts (the paper's Fig. 4; an artifact)."""
    from tasks.common.store import Store
    from tasks.evaluate.cluster_truth import clusters_per_concept, spread_summary

    the_store = Store(store)
    truth = pd.read_parquet(truth_path, columns=["uid", "concept"])
    rows = []
    for name, tree in trees.items():
        per_concept = clusters_per_concept(the_store, the_store.relative(tree["folder"]), truth)
        rows.append({"tree": name, "levels": " / ".join(str(level["k"]) for level in tree["levels"]),
                     **spread_summary(per_concept)})
    create_table_artifact(key="demo-clusters-vs-truth", table=rows,
                          description="Top-level clusters per true concept: a log-log slope near 0 and more "
                                      "concepts with a cluster mean a more even spread.")
    return rows


def demo_config(n_samples: int, seed: int) -> dict:
    """The default demo pool at another size: small pools keep every concept with fewer samples each."""
    return asdict(DemoPoolConfig(n_samples=n_samples, seed=seed, min_per_concept=min(12, max(1, n_samples // 400))))


def _subset_uids(manifest: dict) -> np.ndarray:
    import fsspec

    with fsspec.open(manifest["outputs"]["parquet"], "rb") as handle:
        return pd.read_parquet(handle, columns=["uid"])["uid"].to_numpy()


def _pool_uids(store: str, pool_name: str) -> tuple[np.ndarray, np.ndarray]:
    from tasks.common.store import Store
    from tasks.sample.pool_samples import pool_samples

    samples = pool_samples(Store(store), pool_name)
    return samples.uids, samples.uids[samples.frame["kept"].to_numpy(dtype=bool)]


@task(name="check_subsets_against_truth")
def check_subsets_against_truth(subsets: dict[str, dict], truth_path: str, store: str, pool_name: str) -> list[dict]:
    """Indicators over the true concepts for the pool, the filtered pool and every subset (artifact and plot)."""
    from tasks.common.store import Store
    from tasks.demo_pool.curation_ab import concept_balance

    pool_uids, kept_uids = _pool_uids(store, pool_name)
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    rows, plot = concept_balance({name: _subset_uids(m) for name, m in subsets.items()}, truth, pool_uids, kept_uids)
    Store(store).write_bytes(f"reports/{pool_name}/subset_concepts.png", plot)
    create_table_artifact(key="demo-subsets-vs-concepts", table=rows,
                          description="Indicators over the true concepts: higher normalised entropy, lower "
                                      "ls5 and lower long-tail shares mean a flatter, more balanced subset.")
    return rows


@task(name="curation_ab_report")
def curation_ab_report(results: dict[str, dict], balance: list[dict], truth_path: str, store: str,
                       pool_name: str) -> dict:
    """The A/B table: each trained arm's accuracies and indicators, and which arm won (artifact and JSON)."""
    import fsspec

    from tasks.common.store import Store
    from tasks.demo_pool.curation_ab import ab_rows

    evaluations = {}
    for name, result in results.items():
        with fsspec.open(f"{result['results']}/results.jsonl", "r") as handle:
            lines = [json.loads(line) for line in handle if line.strip()]
        evaluations[name] = {"summary": result["eval"],
                             "concepts": next(line for line in reversed(lines) if line["key"] == "demo/concepts")}
    pool_uids, _ = _pool_uids(store, pool_name)
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    counts = np.bincount(truth.loc[truth["uid"].isin(pool_uids), "concept_id"],
                         minlength=int(truth["concept_id"].max()) + 1)
    rows, winner = ab_rows(evaluations, balance, counts)
    report = {"arms": rows, "winner_by_acc1": winner}
    Store(store).write_json(f"reports/{pool_name}/curation_ab.json", report)
    create_table_artifact(key="demo-curation-ab", table=rows,
                          description=f"Equal-size subsets, tiny CLIP at equal samples seen. Best acc@1: {winner}.")
    get_run_logger().info("curation A/B: best zero-shot accuracy with %s", winner)
    return report
