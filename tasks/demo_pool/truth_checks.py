"""The demo's checks against the truth file: what the download, filters, clusters and subsets did
to the planted defects and the true concepts, and the curation A/B table.

These are evaluation steps: only they read the truth file (true concept, planted defects per uid);
no curation stage does. Each takes records the pipeline published (manifests) and the truth as a
data frame, and returns plain rows (lists of dicts) for a table.

In:  the store, manifests (pool, filters, trees, subsets, evaluations), a resolved pool snapshot,
     the truth frame. Out: table rows, and for subsets a plot (PNG bytes); :func:`publish_report`
     writes a report's files and, last, its manifest into the catalog's report folder.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from tasks.common.catalog import Catalog, PoolSnapshot
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.demo_pool.by_frequency import recall_by_frequency
from tasks.demo_pool.cluster_truth import clusters_per_concept, spread_summary
from tasks.demo_pool.curation_ab import ab_rows, concept_balance
from tasks.demo_pool.filter_truth import filter_precision_recall
from tasks.sample.pool_samples import pool_table, whole_pool_frame

PLANTED_FAILURES = (("http_404", "failed_to_download"), ("timeout", "failed_to_download"),
                    ("truncated", "failed_to_download"), ("not_an_image", "failed_to_resize"))


def download_against_truth(pool: dict, truth: pd.DataFrame) -> list[dict]:
    """Planted failures against what the download reported, per status and reason."""
    reasons = pool["stats"]["reason_counts"]
    rows = [{"status": "success", "reason": "(all)", "planted": int((truth["expected_status"] == "success").sum()),
             "downloaded": int(pool["rows"].get("success", 0))}]
    for failure, status in PLANTED_FAILURES:
        rows.append({"status": status, "reason": failure, "planted": int((truth["url_failure"] == failure).sum()),
                     "downloaded": int(reasons.get(status, {}).get(failure, 0))})
    return rows


def evaluation_lines(store: Store, evaluation: dict) -> list[dict]:
    """The per-task result lines of an evaluation (its manifest's ``results`` file)."""
    text = store.read_bytes(store.relative(evaluation["outputs"]["results"])).decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def concept_line(store: Store, evaluation: dict) -> dict:
    return next(line for line in reversed(evaluation_lines(store, evaluation)) if line["key"] == "demo/concepts")


def concept_counts(snapshot_uids: np.ndarray, truth: pd.DataFrame, n_concepts: int) -> np.ndarray:
    return np.bincount(truth.loc[truth["uid"].isin(snapshot_uids), "concept_id"], minlength=n_concepts)


def long_tail(store: Store, evaluation: dict, snapshot: PoolSnapshot, truth: pd.DataFrame) -> dict:
    """Zero-shot recall per concept against the concept's count among the downloaded samples."""
    concepts = concept_line(store, evaluation)
    downloaded = whole_pool_frame(pool_table(store, snapshot), ("uid",))["uid"].to_numpy()
    counts = concept_counts(downloaded, truth, len(concepts["metrics"]["per_class_recall"]))
    return recall_by_frequency(concepts["metrics"]["per_class_recall"], counts)


def filters_against_truth(store: Store, filters: dict, truth: pd.DataFrame) -> list[dict]:
    """Precision and recall of each filter against the defects the generator planted."""
    frames = []
    for uri in filters["outputs"]["decisions"].values():
        with store.open(store.relative(uri)) as handle:
            frames.append(pd.read_parquet(handle))
    return filter_precision_recall(pd.concat(frames, ignore_index=True), truth)


def clusters_against_truth(store: Store, trees: dict[str, dict], truth: pd.DataFrame) -> list[dict]:
    """How evenly each tree's top clusters spread over the true concepts (the paper's Fig. 4)."""
    return [{"tree": name, "levels": " / ".join(str(level["k"]) for level in tree["stats"]["levels"]),
             **spread_summary(clusters_per_concept(store, tree, truth))} for name, tree in trees.items()]


def subset_uids(store: Store, subset: dict) -> np.ndarray:
    with store.open(store.relative(subset["outputs"]["parquet"])) as handle:
        return pd.read_parquet(handle, columns=["uid"])["uid"].to_numpy()


def subsets_against_truth(store: Store, snapshot: PoolSnapshot, subsets: dict[str, dict],
                          truth: pd.DataFrame) -> tuple[list[dict], bytes]:
    """Indicators over the true concepts for the pool, what the filters kept and every subset; a plot."""
    table = pool_table(store, snapshot)
    uids = whole_pool_frame(table, ("uid",))["uid"].to_numpy()
    return concept_balance({name: subset_uids(store, m) for name, m in subsets.items()}, truth, uids, uids[table.kept])


def curation_ab(store: Store, evaluations: dict[str, dict], balance: list[dict], snapshot: PoolSnapshot,
                truth: pd.DataFrame) -> dict:
    """The A/B table: each trained arm's accuracies and indicators, and the arm with the best acc@1."""
    per_arm = {name: {"summary": evaluation["stats"], "concepts": concept_line(store, evaluation)}
               for name, evaluation in evaluations.items()}
    uids = whole_pool_frame(pool_table(store, snapshot), ("uid",))["uid"].to_numpy()
    counts = concept_counts(uids, truth, int(truth["concept_id"].max()) + 1)
    rows, winner = ab_rows(per_arm, balance, counts)
    return {"arms": rows, "winner_by_acc1": winner}


def publish_report(catalog: Catalog, pool: str, report: str, files: dict[str, bytes | dict | list],
                   inputs: dict) -> dict:
    """Write a report's files (JSON for dicts and lists, bytes as they are) and, last, its manifest."""
    store = catalog.store
    folder = catalog.report_folder(pool, report)
    outputs = {"folder": store.uri(folder)}
    for name, content in files.items():
        target = f"{folder}/{name}"
        outputs[name] = store.write_bytes(target, content) if isinstance(content, bytes) else store.write_json(
            target, content)
    return catalog.publish(folder, Manifest(stage="report", name=f"{pool}/{report}", store=store.root, config={},
                                            code_version="1", inputs=inputs, outputs=outputs))
