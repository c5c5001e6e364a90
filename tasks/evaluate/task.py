"""Prefect task of the evaluation stage: a thin wrapper over :func:`tasks.evaluate.runner.evaluate_training_run`.

Cached by the training run's manifest and the task list's content; the results table is an artifact.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from tasks.common.catalog import Catalog
from tasks.common.prefect_support import RETRY_DELAYS, artifact_key, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.evaluate.runner import evaluate_training_run, evaluation_folder


def _eval_cache_key(context, parameters) -> str:
    catalog = Catalog(parameters["store"])
    folder = evaluation_folder(catalog, parameters["training"], parameters["tasklist"], parameters["run_name"])
    return validated_cache_key(catalog, "evaluate-" + folder.replace("/", "-"), folder)


@task(name="evaluate_checkpoint", retries=1, retry_delay_seconds=RETRY_DELAYS[:1],
      retry_condition_fn=retry_unless_input_error, cache_key_fn=_eval_cache_key,
      task_run_name="evaluate_checkpoint {run_name}")
def evaluate_task(store: Store, training: dict, tasklist: str, run_name: str) -> dict:
    manifest = evaluate_training_run(Catalog(store), training, tasklist, run_name, log=get_run_logger().info)
    summary = manifest["stats"]
    rows = [{"task": t["key"], "dataset": t["dataset"], "metric": t["main_metric"], "score": t["score"],
             "random": t["random_score"]} for t in summary["tasks"]]
    rows.append({"task": "average", "dataset": "", "metric": "", "score": summary["average"], "random": None})
    create_table_artifact(key=artifact_key(store, run_name, "evaluation"), table=rows,
                          description=f"Evaluation of `{summary['checkpoint']}` ({summary['model']})")
    return manifest
