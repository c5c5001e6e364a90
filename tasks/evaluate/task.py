"""Prefect tasks of the evaluation stage: thin wrappers over :mod:`tasks.evaluate.runner`."""

from __future__ import annotations

import fsspec
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.common.hashing import code_version, hash_json
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, store_from
from tasks.evaluate.runner import evaluate_checkpoint


EVALUATE_VERSION = 1  # bump when a change alters the metrics


def _tasklist_hash(tasklist: str) -> str:
    with fsspec.open(tasklist, "rb") as handle:
        return hash_json(handle.read().decode())


def _eval_cache_key(context, parameters) -> str:
    return "evaluate-" + hash_json({
        "model": parameters["model"], "checkpoint": parameters["checkpoint"],
        "tasklist": _tasklist_hash(parameters["tasklist"]), "results": parameters["results"],
        "code": code_version("evaluate", EVALUATE_VERSION, ("open_clip_torch", "torch")),
    })


@task(name="evaluate_checkpoint", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_eval_cache_key)
def evaluate_checkpoint_task(store: str, model: str, checkpoint: str, tasklist: str, results: str,
                             storage_options: dict | None = None) -> dict:
    logger = get_run_logger()
    summary = evaluate_checkpoint(store_from(store, storage_options), model, checkpoint, tasklist, results,
                                  log=logger.info)
    rows = [{"task": t["key"], "dataset": t["dataset"], "metric": t["main_metric"], "score": t["score"],
             "random": t["random_score"]} for t in summary["tasks"]]
    rows.append({"task": "average", "dataset": "", "metric": "", "score": summary["average"], "random": None})
    create_table_artifact(key="evaluation-" + results.rsplit("/", 1)[-1].lower().replace("_", "-")[:50], table=rows,
                          description=f"Evaluation of `{checkpoint}` ({model})")
    return summary
