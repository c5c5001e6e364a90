"""Prefect task of the training stage: a thin wrapper over :func:`tasks.train.run.train_clip`.

``train_clip_task`` is cached by the run's key (data content hash, config, code version), so a
finished run is a ``Cached`` state in a new flow run; it is retried with backoff, and every
retry resumes from the latest checkpoint.
"""

from __future__ import annotations

from prefect import get_run_logger, task

from tasks.common.catalog import Catalog
from tasks.common.prefect_support import RETRY_DELAYS, retry_unless_input_error, validated_cache_key
from tasks.common.store import Store
from tasks.train.run import run_folder, train_clip, training_data, training_key
from tasks.train.scales import scale_config


def _train_cache_key(context, parameters) -> str:
    _, data_hash, _ = training_data(parameters["data_manifest"])
    config = scale_config(parameters["scale"], parameters.get("overrides"))
    folder = run_folder(parameters["run_name"], data_hash, config)
    return validated_cache_key(Catalog(parameters["store"]),
                               f"train-{parameters['run_name']}-{training_key(data_hash, config)}", folder)


@task(name="train_clip", retries=2, retry_delay_seconds=RETRY_DELAYS[:2], retry_condition_fn=retry_unless_input_error,
      cache_key_fn=_train_cache_key)
def train_clip_task(store: Store, data_manifest: dict, scale: str, overrides: dict | None, run_name: str) -> dict:
    logger = get_run_logger()
    shards, data_hash, n_samples = training_data(data_manifest)
    config = scale_config(scale, overrides)
    logger.info("training %s (%s) on %d samples in %d shards: %d epochs x %d samples", run_name, config.model,
                n_samples, len(shards), config.epochs, config.samples_per_epoch)
    manifest = train_clip(store, shards, data_hash, n_samples, config, run_name, log=logger.info)
    logger.info("trained %s: %d samples seen in %.0f s (%s samples/s); checkpoint %s", run_name,
                manifest["rows"]["samples_seen"], manifest["stats"]["seconds"], manifest["stats"]["samples_per_second"],
                manifest["outputs"]["checkpoint"])
    return manifest
