"""Flow ``train_eval``: train CLIP on a pool's (or a subset's) shards, then evaluate it.

    python -m flows.train_eval --store ./store --data pools/web/manifest.json \
        --tasklist eval/tasklist.yml --scale tiny

Training is open_clip's own entry point at a DataComp scale (or ``tiny``), resumable after a
kill and cached once finished; evaluation covers the task list's zero-shot classification and
retrieval sets, skipping tasks already in the results.
"""

from __future__ import annotations

import argparse
import json

from prefect import flow, task

from tasks.common.errors import InputError
from tasks.common.prefect_support import cached_in_store, store_from
from tasks.evaluate.task import evaluate_checkpoint_task
from tasks.train.task import train_clip_task


@task(name="read_data_manifest")
def read_data_manifest(store: str, data: str, storage_options: dict | None = None) -> dict:
    """The manifest at ``data``: a URI, or a path inside the store."""
    import fsspec

    the_store = store_from(store, storage_options)
    for candidate in (data, the_store.uri(data)):
        fs, path = fsspec.core.url_to_fs(candidate, **(storage_options or {}))
        if fs.exists(path):
            with fs.open(path, "rb") as handle:
                return json.load(handle)
    raise InputError(f"data: no manifest at {data!r} (nor at {the_store.uri(data)!r})")


@flow(name="train_eval", log_prints=True)
def train_eval(store: str, data: str, tasklist: str, scale: str = "tiny", overrides: dict | None = None,
               run_name: str = "clip", storage_options: dict | None = None) -> dict:
    """Train a CLIP model on ``data`` and evaluate it on ``tasklist``.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        data: the pool or subset manifest to train on (URI, or path inside the store).
        tasklist: evaluation task list (DataComp tasklist.yml format; paths relative to it).
        scale: tiny, small, medium, large or xlarge (DataComp's hyperparameters).
        overrides: any training hyperparameter, e.g. {"batch_size": 512, "samples_seen": 100000}.
        run_name: name of the run's folder under <store>/train/.
        storage_options: fsspec options for an s3:// store.
    """
    manifest = read_data_manifest(store, data, storage_options)
    train = cached_in_store(train_clip_task, store_from(store, storage_options))
    trained = train(store, manifest, scale, overrides, run_name, storage_options)
    evaluate = cached_in_store(evaluate_checkpoint_task, store_from(store, storage_options))
    results = "eval/" + trained["folder"].rstrip("/").rsplit("/", 1)[-1]
    summary = evaluate(store, trained["model"], trained["checkpoint"], tasklist, results, storage_options)
    return {"train": trained, "eval": summary, "results": store_from(store, storage_options).uri(results)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train CLIP on a manifest's shards and evaluate it.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data", required=True, help="pool or subset manifest (URI or path in the store)")
    parser.add_argument("--tasklist", required=True)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--override", action="append", default=[], metavar="NAME=VALUE",
                        help="a training hyperparameter, e.g. --override batch_size=512")
    parser.add_argument("--run-name", default="clip")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.override:
        name, _, value = item.partition("=")
        overrides[name] = json.loads(value) if value[:1].isdigit() or value[:1] in "-[{" else value
    out = train_eval(store=args.store, data=args.data, tasklist=args.tasklist, scale=args.scale,
                     overrides=overrides or None, run_name=args.run_name)
    print(json.dumps(out["eval"], indent=2))


if __name__ == "__main__":
    main()
