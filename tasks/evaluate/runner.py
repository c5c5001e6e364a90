"""Evaluate one checkpoint on a task list; one result line per task; finished tasks are skipped.

In:  the store, a model name and checkpoint, a task list, and where the results go in the store;
     for :func:`evaluate_training_run`, the catalog, a training run's manifest and a run name.
Out: ``<results>/results.jsonl`` (one JSON object per task: key, name, type, main metric,
     metrics, checkpoint), rewritten atomically after each task so a crash loses at most the
     task in progress, and ``<results>/summary.json`` with the aggregate table;
     :func:`evaluate_training_run` writes them into the evaluation folder the catalog gives
     (keyed by the training manifest and the task list's content) and, last, the stage's manifest.
"""

from __future__ import annotations

import json
import time

import numpy as np

import fsspec

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.evaluate.eval_sets import EvalTask, iter_samples, open_eval_set, read_tasklist
from tasks.evaluate.metrics import class_embeddings, retrieval, zeroshot_classification
from tasks.evaluate.model import ClipEmbedder


def run_task(embedder: ClipEmbedder, task: EvalTask) -> dict:
    eval_set = open_eval_set(task)
    images, targets = [], []
    for image, target in iter_samples(eval_set):
        images.append(image)
        targets.append(target)
    if not images:
        raise InputError(f"evaluation set {task.key!r} at {task.path} holds no samples")
    image_embeddings = embedder.embed_images(images)
    if task.type == "retrieval":
        texts = [caption for captions in targets for caption in captions]
        text_image = np.repeat(np.arange(len(targets)), [len(c) for c in targets])
        return retrieval(image_embeddings, embedder.embed_texts(texts), text_image)
    prompts = [template.replace("{c}", name) for name in eval_set.classnames for template in eval_set.templates]
    template_embeddings = embedder.embed_texts(prompts).reshape(len(eval_set.classnames), len(eval_set.templates), -1)
    labels = np.asarray(targets)
    if labels.max() >= len(eval_set.classnames):
        raise InputError(f"evaluation set {task.key!r}: class index {labels.max()} but only "
                         f"{len(eval_set.classnames)} class names")
    metrics = zeroshot_classification(image_embeddings, class_embeddings(template_embeddings), labels)
    metrics["classnames"] = eval_set.classnames
    return metrics


def read_results(store: Store, results: str) -> list[dict]:
    path = f"{results}/results.jsonl"
    if not store.exists(path):
        return []
    return [json.loads(line) for line in store.read_bytes(path).decode().splitlines() if line.strip()]


def evaluate_checkpoint(store: Store, model: str, checkpoint: str, tasklist: str, results: str,
                        eval_root: str | None = None, log=print) -> dict:
    """Run every task of the list not already in the results; return the summary."""
    tasks = read_tasklist(tasklist, eval_root, store.options_for(tasklist))
    identity = hash_json({"model": model, "checkpoint": checkpoint})
    lines = read_results(store, results)
    done = {(line["key"], line["identity"]) for line in lines}
    embedder = None
    for task in tasks:
        if task.type == "unsupported":
            log(f"evaluation {task.key}: {task.name} needs metrics this project does not implement, skipped")
            continue
        if (task.key, identity) in done:
            log(f"evaluation {task.key}: already in {results}/results.jsonl, skipped")
            continue
        embedder = embedder or ClipEmbedder(model, checkpoint, storage_options=store.fsspec_options())
        started = time.monotonic()
        metrics = run_task(embedder, task)
        lines.append({"key": task.key, "dataset": task.name, "type": task.type, "main_metric": task.main_metric,
                      "main_score": metrics[task.main_metric], "random_score": task.random_score,
                      "metrics": metrics, "model": model, "checkpoint": checkpoint, "identity": identity,
                      "seconds": round(time.monotonic() - started, 2)})
        store.write_bytes(f"{results}/results.jsonl",
                          "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
        log(f"evaluation {task.key}: {task.main_metric} = {metrics[task.main_metric]:.4f}")
    if not store.exists(f"{results}/results.jsonl"):  # no task could run (all unsupported): an empty table
        store.write_bytes(f"{results}/results.jsonl", b"")
    mine = [line for line in lines if line["identity"] == identity and line["key"] in {t.key for t in tasks}]
    summary = {
        "model": model, "checkpoint": checkpoint,
        "tasks": [{"key": line["key"], "dataset": line["dataset"], "main_metric": line["main_metric"],
                   "score": round(line["main_score"], 4), "random_score": line["random_score"]} for line in mine],
        "average": round(float(np.mean([line["main_score"] for line in mine])), 4) if mine else None,
    }
    store.write_json(f"{results}/summary.json", summary)
    return summary


EVALUATE_VERSION = 2  # bump when a change alters the metrics


def stage_code_version() -> str:
    return code_version("evaluate", EVALUATE_VERSION, ("open_clip_torch", "torch"))


def tasklist_content_hash(tasklist: str, storage_options: dict | None = None) -> str:
    try:
        with fsspec.open(tasklist, "rb", **(storage_options or {})) as handle:
            return hash_json(handle.read().decode())
    except FileNotFoundError as exc:
        raise InputError(f"tasklist {tasklist}: no such file") from exc


def evaluation_folder(catalog: Catalog, training: dict, tasklist: str, run_name: str) -> str:
    key = hash_json({"training": training["content_hash"],
                     "tasklist": tasklist_content_hash(tasklist, catalog.store.options_for(tasklist)),
                     "code": stage_code_version()})
    return catalog.evaluation_folder(run_name, key)


def evaluate_training_run(catalog: Catalog, training: dict, tasklist: str, run_name: str, log=print) -> dict:
    """Evaluate a training run's final checkpoint on ``tasklist``; returns the evaluation's manifest."""
    folder = evaluation_folder(catalog, training, tasklist, run_name)
    done = catalog.finished(folder, log)
    if done is not None:
        return done
    store = catalog.store
    model, checkpoint = training["config"]["model"], training["outputs"]["checkpoint"]
    summary = evaluate_checkpoint(store, model, checkpoint, tasklist, folder, log=log)
    manifest = Manifest(
        stage="evaluate", name=run_name, store=store.root, config={"tasklist": tasklist, "model": model},
        code_version=stage_code_version(),
        inputs={"training": training["content_hash"],
                "tasklist": tasklist_content_hash(tasklist, store.options_for(tasklist))},
        outputs={"folder": store.uri(folder), "results": store.uri(f"{folder}/results.jsonl"),
                 "summary": store.uri(f"{folder}/summary.json")},
        rows={"tasks": len(summary["tasks"])}, stats=summary)
    return catalog.publish(folder, manifest)
