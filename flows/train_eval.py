"""Flow ``train_eval``: train CLIP on a pool's (or a subset's) shards, then evaluate it.

    python -m flows.train_eval --store ./store --data pools/web/manifest.json \
        --tasklist eval/tasklist.yml --scale tiny

Training is open_clip's own entry point at a DataComp scale (or ``tiny``), resumable after a
kill and cached once finished; evaluation covers the task list's zero-shot classification and
retrieval sets, skipping tasks already in the results.
"""

from __future__ import annotations

import json

from prefect import flow, task

from tasks.common.catalog import Catalog, check_name
from tasks.common.cli import CliParser, command_line
from tasks.common.errors import InputError
from tasks.common.leftover_runs import crash_leftover_runs
from tasks.common.prefect_settings import use_project_settings
from tasks.common.prefect_support import RETRY_DELAYS, cached_in_store, retry_unless_input_error, store_from
from tasks.common.store import Store
from tasks.evaluate.eval_sets import read_tasklist
from tasks.evaluate.task import evaluate_task
from tasks.train.run import training_data
from tasks.train.scales import scale_config
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


@flow(name="train_eval", log_prints=True, flow_run_name="train-eval-{run_name}")
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
    crash_leftover_runs()  # a retried run: what its killed process left Running ends Crashed
    the_store = store_from(store, storage_options)
    check_training_settings(the_store, tasklist, scale, overrides, run_name)  # before hours of training
    manifest = read_data_manifest(the_store, data)
    trained = cached_in_store(train_clip_task, the_store)(the_store, manifest, scale, overrides, run_name)
    evaluation = cached_in_store(evaluate_task, the_store)(the_store, trained, tasklist, run_name)
    return {"train": trained, "eval": evaluation["stats"], "evaluation": evaluation}


def check_training_settings(store: Store, tasklist: str, scale: str, overrides: dict | None, run_name: str) -> None:
    """The settings of ``train_eval`` that need no training data, checked as its tasks check them: the run's
    name, the scale with its overrides, and the evaluation task list (read and parsed, before hours of training)."""
    check_name(run_name, "run_name")
    scale_config(scale, overrides)
    read_tasklist(tasklist, None, store.options_for(tasklist))


def check_train_eval(store: Store, data: str, tasklist: str, scale: str, overrides: dict | None,
                     run_name: str) -> None:
    """What ``main`` checks before Prefect starts: :func:`check_training_settings`, and the data's manifest
    found and listing shards to train on."""
    check_training_settings(store, tasklist, scale, overrides, run_name)
    training_data(read_data_manifest.fn(store, data))


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="python -m flows.train_eval",
                       description="Train CLIP on a manifest's shards and evaluate it.")
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
    check_train_eval(Store(args.store), args.data, args.tasklist, args.scale, overrides, args.run_name)
    out = train_eval(store=args.store, data=args.data, tasklist=args.tasklist, scale=args.scale,
                     overrides=overrides or None, run_name=args.run_name)
    print(json.dumps(out["eval"], indent=2))


if __name__ == "__main__":
    main()
