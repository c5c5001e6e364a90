"""Prefect task of the training stage: a thin wrapper over :func:`tasks.train.run.train_clip`.

``train_clip_task`` is cached by the run's key (data content hash, config, code version), so a
finished run is a ``Cached`` state in a new flow run; it is retried with backoff, and every
retry resumes from the latest checkpoint.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prefect import get_run_logger, task

from tasks.common.catalog import Catalog
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, validated_cache_key
from tasks.common.progress import progress_while
from tasks.common.store import Store
from tasks.train.run import run_folder, train_clip, training_data, training_key
from tasks.train.scales import scale_config


# open_clip's progress line: "Train Epoch: <epoch from 0> [<samples>/<samples per epoch> (<percent>%)] ..."
PROGRESS_LINE = re.compile(rb"Train Epoch: (\d+) \[\s*(\d+)/(\d+) ")


def training_progress(log_path: Path, epochs: int, tail_bytes: int = 1 << 16) -> float | None:
    """The share of the run's samples seen, from the last progress line in the end of open_clip's log."""
    if not log_path.exists():
        return None
    with open(log_path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail_bytes))
        found = PROGRESS_LINE.findall(handle.read())
    if not found:
        return None
    epoch, seen, per_epoch = (int(value) for value in found[-1])
    return (epoch + seen / max(1, per_epoch)) / max(1, epochs)


def _train_cache_key(context, parameters) -> str:
    _, data_hash, _ = training_data(parameters["data_manifest"])
    config = scale_config(parameters["scale"], parameters.get("overrides"))
    folder = run_folder(parameters["run_name"], data_hash, config)
    return validated_cache_key(Catalog(parameters["store"]),
                               f"train-{parameters['run_name']}-{training_key(data_hash, config)}", folder)


@task(name="train_clip", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_train_cache_key, task_run_name="train_clip {run_name}", tags=["training"])
def train_clip_task(store: Store, data_manifest: dict, scale: str, overrides: dict | None, run_name: str) -> dict:
    logger = get_run_logger()
    shards, data_hash, n_samples = training_data(data_manifest)
    config = scale_config(scale, overrides)
    logger.info("training %s (%s) on %d samples in %d shards: %d epochs x %d samples", run_name, config.model,
                n_samples, len(shards), config.epochs, config.samples_per_epoch)
    log_path = store.staging_path(run_folder(run_name, data_hash, config)) / "train.log"
    with progress_while(f"training {run_name}: share of its {config.realised_samples_seen} samples seen",
                        lambda: training_progress(log_path, config.epochs)) as bar:
        manifest = train_clip(store, shards, data_hash, n_samples, config, run_name, log=logger.info)
        bar.update(1.0)
    logger.info("trained %s: %d samples seen in %.0f s (%s samples/s); checkpoint %s", run_name,
                manifest["rows"]["samples_seen"], manifest["stats"]["seconds"], manifest["stats"]["samples_per_second"],
                manifest["outputs"]["checkpoint"])
    return manifest
