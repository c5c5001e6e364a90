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

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import RETRY_DELAYS, cached_in_store, retry_unless_input_error, store_from
from tasks.common.store import Store
from tasks.evaluate.task import evaluate_task
from tasks.train.task import train_clip_task


@task(name="read_data_manifest", retries=2, retry_delay_seconds=RETRY_DELAYS[:2],
      retry_condition_fn=retry_unless_input_error)
def read_data_manifest(store: Store, data: str) -> dict:
    """The manifest of the pool or subset at ``data``: a stage folder or its manifest, as a URI or a path
    inside the store."""
    import fsspec

    candidates = [data] if data.endswith(".json") else [Catalog.manifest_path(data)]
    for candidate in list(candidates):
        if "://" not in candidate and not candidate.startswith("/"):
            candidates.insert(0, store.uri(candidate))
    base = store.uri().rstrip("/") + "/"
    for candidate in candidates:
        if candidate.startswith(base):  # in the store: through the store, with its credentials
            if store.exists(store.relative(candidate)):
                return store.read_json(store.relative(candidate))
            continue
        fs, path = fsspec.core.url_to_fs(candidate)
        if fs.exists(path):
            with fs.open(path, "rb") as handle:
                return json.load(handle)
    raise InputError(f"data: no manifest at {data!r} (looked at {', '.join(candidates)})")


@flow(name="train_eval", log_prints=True)
def train_eval(store: str, data: str, tasklist: str, scale: str = "tiny", overrides: dict | None = None,
               run_name: str = "clip", storage_options: dict | None = None) -> dict:
    """Train a CLIP model on ``data`` and evaluate it on ``tasklist``.

    Args:
        store: store root (local folder or s3://bucket/prefix).
        data: the pool or subset to train on: its folder or its manifest (URI, or path inside the store).
        tasklist: evaluation task list (DataComp tasklist.yml format; paths relative to it).
        scale: tiny, small, medium, large or xlarge (DataComp's hyperparameters).
        overrides: any training hyperparameter, e.g. {"batch_size": 512, "samples_seen": 100000}.
        run_name: the run's name (1-63 lower-case letters, digits, '-', '_'): <store>/train/<run_name>-<key>/.
        storage_options: fsspec options for an s3:// store (no secrets: credentials come from the
            environment or a Prefect Secret block named by "credentials_block").
    Returns:
        {"train": the training manifest, "eval": the evaluation summary, "evaluation": its manifest}.
    """
    the_store = store_from(store, storage_options)
    manifest = read_data_manifest(the_store, data)
    trained = cached_in_store(train_clip_task, the_store)(the_store, manifest, scale, overrides, run_name)
    evaluation = cached_in_store(evaluate_task, the_store)(the_store, trained, tasklist, run_name)
    return {"train": trained, "eval": evaluation["stats"], "evaluation": evaluation}


def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = argparse.ArgumentParser(description="Train CLIP on a manifest's shards and evaluate it.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--data", required=True, help="pool or subset manifest (URI or path in the store)")
    parser.add_argument("--tasklist", required=True)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--override", action="append", default=[], metavar="NAME=VALUE",
                        help="a training hyperparameter, e.g. --override batch_size=512")
    parser.add_argument("--run-name", default="clip")
    args = parser.parse_args(argv)
    from tasks.common.options import parse_overrides

    overrides = parse_overrides(args.override)
    out = train_eval(store=args.store, data=args.data, tasklist=args.tasklist, scale=args.scale,
                     overrides=overrides or None, run_name=args.run_name)
    print(json.dumps(out["eval"], indent=2))


if __name__ == "__main__":
    main()
