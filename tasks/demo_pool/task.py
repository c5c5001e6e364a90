"""Prefect tasks of the demo: generate the web root, write the index, and the checks against the truth.

The checks are thin wrappers over :mod:`tasks.demo_pool.truth_checks` (the only readers of the
truth file) that publish their tables as artifacts and their reports through the catalog.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.dask_cluster import dask_client
from tasks.common.errors import InputError
from tasks.common.plots import png_markdown
from tasks.common.prefect_support import artifact_key
from tasks.common.store import Store
from tasks.demo_pool import truth_checks
from tasks.demo_pool.curation_ab import subset_size
from tasks.demo_pool.eval_sets import generate_eval_sets
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
def check_download_against_truth(pool: dict, truth_path: str) -> list[dict]:
    """Planted failures in the demo pool against the download's report (an artifact)."""
    rows = truth_checks.download_against_truth(pool, pd.read_parquet(truth_path))
    create_table_artifact(key=artifact_key(pool["store"], pool["name"], "download-vs-truth"), table=rows,
                          description="Planted URL failures in the demo pool against the download's report.")
    return rows


@task(name="generate_demo_eval_sets")
def generate_demo_eval_sets_task(folder: str, seed: int) -> str:
    """Held-out, balanced evaluation sets; returns the task list path."""
    return generate_eval_sets(folder, seed=seed)


@task(name="long_tail_report")
def long_tail_report(store: Store, evaluation: dict, snapshot: dict, truth_path: str) -> dict:
    """Zero-shot recall of the model trained on the raw pool, by how often the concept occurs in it."""
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    report = truth_checks.long_tail(store, evaluation, PoolSnapshot.from_dict(snapshot), truth)
    create_table_artifact(key=artifact_key(store, snapshot["pool"]["name"], "long-tail"), table=report["groups"],
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
def check_filters_against_truth(store: Store, filters: dict, truth_path: str) -> list[dict]:
    """Precision and recall of each filter against the defects the demo generator planted (an artifact)."""
    rows = truth_checks.filters_against_truth(store, filters, pd.read_parquet(truth_path))
    create_table_artifact(key=artifact_key(store, filters["name"], "filters-vs-truth"), table=rows,
                          description="Each filter against the defects the demo generator planted.")
    return rows


def demo_trees(kept: int) -> dict[str, dict]:
    """The demo's two trees over the ``kept`` filtered samples, with the same number of top clusters.

    One level of k-means against four levels with resampling (the paper's recipe scaled down:
    1000 / 400 / 200 / 100 clusters for the default pool's ~11,000 kept samples, as many top
    clusters as concepts; smaller pools get proportionally fewer, and levels that would not be
    smaller than the one below them are left out). Fewer than 2 kept samples: an :class:`InputError`.
    """
    if kept < 2:
        raise InputError(f"the filters kept {kept} of the demo pool's samples: too few to cluster (at least 2); "
                         "a larger --n-samples keeps more")
    top = min(100, max(2, kept // 20), kept)
    ks = sorted({min(10 * top, kept), min(4 * top, kept), min(2 * top, kept), top}, reverse=True)
    return {"1 level": {"levels": [top]},
            "4 levels, resampling": {"levels": [ks[0], *({"k": k, "resampling_steps": 10} for k in ks[1:])]}}


CURATION_AB_BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "curation_ab.json"


def curation_ab_over_seeds(size: int, result_file: Path = CURATION_AB_BENCHMARK) -> dict:
    """What ``benchmarks/curation_ab.py`` measured over several seeds per arm (its kept result), to read
    beside the demo's one run per arm: the command, the ranking by mean acc@1 and the paired tests'
    p-values against random, and whether it was measured at this run's subset ``size``; ``result``
    None where no readable result is kept."""
    command = ".venv/bin/python benchmarks/curation_ab.py"
    absent = {"command": command, "result": None,
              "says": f"One seed per arm is within seed noise; `{command}` settles the ranking over seeds."}
    if not result_file.is_file():
        return absent
    try:
        result = json.loads(result_file.read_text())
        means = {arm: figures["acc1"]["mean"] for arm, figures in result["arms"].items()}
        tests = result["p_vs_random"]
        arms = ", ".join(f"{arm} {'n/a' if means[arm] is None else f'{means[arm]:.3f}'}"
                         + ("" if tests.get(arm) is None else f" (p {tests[arm]:.2g})")
                         for arm in result["ranking_by_acc1"])
        same_size = result.get("subset_size") == size
        says = (f"Over {len(result['seeds'])} seeds at {result['samples_seen']} samples seen (`{command}`): {arms} "
                f"(mean acc@1; p: paired t-test against random)"
                + ("." if same_size else f", measured on subsets of {result.get('subset_size')} samples, not "
                                         f"{size}: another run of the demo (its own model, filters and trees)."))
        return {"command": command, "result": "benchmarks/results/curation_ab.json",
                "samples_seen": result["samples_seen"], "seeds": result["seeds"], "same_subset_size": same_size,
                "ranking_by_acc1": result["ranking_by_acc1"], "acc1_mean": means, "p_vs_random": tests, "says": says}
    except (KeyError, TypeError, ValueError) as error:
        return {**absent, "says": f"{absent['says']} (the kept result {result_file.name} is unreadable: {error!r})"}


@task(name="check_clusters_against_truth")
def check_clusters_against_truth(store: Store, trees: dict[str, dict], truth_path: str) -> list[dict]:
    """How evenly each tree's top clusters spread over the true concepts (the paper's Fig. 4; an artifact)."""
    rows = truth_checks.clusters_against_truth(store, trees, pd.read_parquet(truth_path, columns=["uid", "concept"]))
    pool = next(iter(trees.values()))["name"] if trees else "demo"
    create_table_artifact(key=artifact_key(store, pool, "clusters-vs-truth"), table=rows,
                          description="Top-level clusters per true concept: a log-log slope near 0 and more "
                                      "concepts with a cluster mean a more even spread.")
    return rows


def demo_config(n_samples: int, seed: int) -> dict:
    """The default demo pool at another size: small pools keep every concept with fewer samples each."""
    return asdict(DemoPoolConfig(n_samples=n_samples, seed=seed, min_per_concept=min(12, max(1, n_samples // 400))))


@task(name="check_subsets_against_truth")
def check_subsets_against_truth(store: Store, snapshot: dict, subsets: dict[str, dict], truth_path: str) -> list[dict]:
    """Indicators over the true concepts for the pool, the filtered pool and every subset (artifact and plot)."""
    resolved = PoolSnapshot.from_dict(snapshot)
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    rows, plot = truth_checks.subsets_against_truth(store, resolved, subsets, truth)
    truth_checks.publish_report(Catalog(store), resolved.pool.name, "subset-concepts",
                                {"subset_concepts.json": rows, "subset_concepts.png": plot},
                                {"subsets": {name: m["content_hash"] for name, m in subsets.items()}})
    create_table_artifact(key=artifact_key(store, resolved.pool.name, "subsets-vs-concepts"), table=rows,
                          description="Indicators over the true concepts: higher normalised entropy, lower "
                                      "ls5 and lower long-tail shares mean a flatter, more balanced subset.")
    create_markdown_artifact(key=artifact_key(store, resolved.pool.name, "subsets-vs-concepts-plot"), markdown=(
        f"# Subsets of `{resolved.pool.name}` over the true concepts\n\n"
        + png_markdown(plot, "samples per true concept, pool and subsets")))
    return rows


@task(name="curation_ab_report")
def curation_ab_report(store: Store, snapshot: dict, evaluations: dict[str, dict], balance: list[dict],
                       truth_path: str) -> dict:
    """The A/B table: each trained arm's accuracies and indicators, and which arm won (artifact and report)."""
    resolved = PoolSnapshot.from_dict(snapshot)
    truth = pd.read_parquet(truth_path, columns=["uid", "concept_id"])
    report = {**truth_checks.curation_ab(store, evaluations, balance, resolved, truth),
              "over_seeds": curation_ab_over_seeds(subset_size(resolved.filters.manifest["rows"]["kept"]))}
    truth_checks.publish_report(Catalog(store), resolved.pool.name, "curation-ab", {"curation_ab.json": report},
                                {"evaluations": {name: m["content_hash"] for name, m in evaluations.items()}})
    create_table_artifact(key=artifact_key(store, resolved.pool.name, "curation-ab"), table=report["arms"],
                          description=f"Equal-size subsets, tiny CLIP at equal samples seen, one seed per arm. "
                                      f"Best acc@1: {report['winner_by_acc1']}. {report['over_seeds']['says']}")
    get_run_logger().info("curation A/B: best zero-shot accuracy with %s (one seed per arm). %s",
                          report["winner_by_acc1"], report["over_seeds"]["says"])
    return report
