"""Download one slice of a pool with img2dataset and publish it atomically in the store.

In:  a :class:`~tasks.download.pool_index.SlicePlan`, its rows (a data frame), a
     :class:`DownloadConfig` and the store.
Out: in the slice's folder (:meth:`Catalog.slice_folder`) img2dataset's webdataset shards
     (``NNNNN.tar``, ``NNNNN.parquet`` holding every sample with its status and error,
     ``NNNNN_stats.json``), ``sizes.json`` (each tar's sample count, which open_clip reads) and,
     written last, the slice's manifest: its shards, each with the
     ``shard_id`` minted here (:func:`~tasks.common.catalog.shard_id`), and its counts by status
     and failure reason. A slice folder without a manifest is unfinished and nothing reads it.

How a crash is survived: img2dataset runs as a child process writing into a local staging
folder in its ``incremental`` mode, so a rerun skips the shards that have their stats file and
redoes only the rest. The slice is checked (every input uid exactly once; tar members agree
with the parquet), then each file is moved (local store) or uploaded (object store) to the
slice folder, then the manifest is written. A rerun finds the manifest and does nothing. The
slice folder name holds the cache key, so different inputs or configs never share a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from tasks.common.catalog import Catalog, shard_id
from tasks.common.errors import InputError, StageFailed
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.process import child_environment, log_tail, run_child
from tasks.common.store import Store
from tasks.common.webdataset import count_samples, sizes_table
from tasks.download.pool_index import SlicePlan, passthrough_columns
from tasks.download.report import classify_error

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")


@dataclass(frozen=True)
class DownloadConfig:
    """img2dataset settings. The defaults follow DataComp's download of its pools."""

    image_size: int = 512
    resize_mode: str = "keep_ratio"
    resize_only_if_bigger: bool = True
    skip_reencode: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 95
    timeout: int = 10
    retries: int = 0
    shard_size: int = 10_000
    processes: int = 2
    threads: int = 64
    user_agent_token: str | None = None

    def validate(self) -> None:
        checks = {
            "image_size": self.image_size >= 8,
            "shard_size": self.shard_size >= 1,
            "processes": self.processes >= 1,
            "threads": self.threads >= 1,
            "timeout": self.timeout >= 1,
            "retries": self.retries >= 0,
            "encode_quality": 1 <= self.encode_quality <= 100,
        }
        for name, ok in checks.items():
            if not ok:
                raise InputError(f"{name}: invalid value {getattr(self, name)!r}")
        if self.resize_mode not in RESIZE_MODES:
            raise InputError(f"resize_mode: {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.encode_format not in ("jpg", "png", "webp"):
            raise InputError(f"encode_format: {self.encode_format!r} is not jpg, png or webp")

    def output_config(self) -> dict:
        """The settings that change what is downloaded (parallelism does not)."""
        config = asdict(self)
        config.pop("processes")
        config.pop("threads")
        return config


STAGE_VERSION = 2  # bump when a change alters the shards or the slice manifest


def stage_code_version() -> str:
    return code_version("download", STAGE_VERSION, ("img2dataset",))


def slice_key(plan: SlicePlan, config: DownloadConfig) -> str:
    """The cache key of a slice: its rows, the output config and the code version."""
    return hash_json({"rows": plan.content_hash, "config": config.output_config(), "code": stage_code_version()})


def slice_folder(catalog: Catalog, plan: SlicePlan, config: DownloadConfig) -> str:
    return catalog.slice_folder(plan.pool, plan.index, slice_key(plan, config))


def slice_input_path(catalog: Catalog, plan: SlicePlan) -> str:
    return catalog.slice_input(plan.pool, plan.index, plan.content_hash)


@dataclass
class SliceResult:
    pool: str
    index: int
    key: str
    folder: str
    n_rows: int
    status_counts: dict[str, int]
    reason_counts: dict[str, dict[str, int]]
    shards: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    rows_hash: str = ""

    def to_manifest(self, store: Store, config: DownloadConfig) -> Manifest:
        """The slice's manifest: its shards (URIs, ids, counts) and its counts by status and reason."""
        shards = [dict(shard, tar=store.uri(shard["tar"]), parquet=store.uri(shard["parquet"]))
                  for shard in self.shards]
        return Manifest(
            stage="download_slice", name=f"{self.pool}/{self.index:05d}", store=store.root,
            config=config.output_config(), code_version=stage_code_version(),
            inputs={"rows": self.rows_hash, "n_rows": self.n_rows},
            outputs={"folder": store.uri(self.folder), "shards": shards},
            rows={"input": self.n_rows, **self.status_counts},
            stats={"index": self.index, "key": self.key, "status_counts": self.status_counts,
                   "reason_counts": self.reason_counts, "seconds": self.seconds})


def staging_dir(catalog: Catalog, plan: SlicePlan, config: DownloadConfig) -> Path:
    """Where img2dataset writes before publishing (see :meth:`Store.staging_path`)."""
    return catalog.store.staging_path(slice_folder(catalog, plan, config))


def write_slice_input(catalog: Catalog, plan: SlicePlan, rows: pd.DataFrame) -> str:
    """Store the rows of a slice (content-addressed, so an existing file is already right)."""
    path = slice_input_path(catalog, plan)
    if not catalog.store.exists(path):
        catalog.store.write_bytes(path, rows.to_parquet(index=False))
    return path


def download_slice(catalog: Catalog, plan: SlicePlan, config: DownloadConfig, log=print) -> dict:
    """Download, verify and publish one slice; return its manifest (the existing one if already done).

    The slice's rows are read from :func:`slice_input_path` (written by :func:`write_slice_input`).
    """
    store = catalog.store
    folder = slice_folder(catalog, plan, config)
    done = catalog.finished(folder, log)
    if done is not None:
        return done
    with store.open(slice_input_path(catalog, plan)) as handle:
        rows = pd.read_parquet(handle)
    if len(rows) != plan.n_rows:
        raise StageFailed(f"slice {plan.index}: {store.uri(slice_input_path(catalog, plan))} holds {len(rows)} rows, "
                          f"its plan {plan.n_rows}; the stored slice input is damaged")
    started = time.monotonic()
    staging = staging_dir(catalog, plan, config)
    output = staging / "shards"
    output.mkdir(parents=True, exist_ok=True)
    input_file = staging / "input.parquet"
    if not input_file.exists():
        tmp = input_file.with_suffix(".tmp")
        rows.to_parquet(tmp, index=False)
        os.replace(tmp, input_file)

    _run_img2dataset(input_file, output, staging, passthrough_columns(rows), config, log)
    result = _verify(plan, rows, output, folder, config)
    sizes = sizes_table([shard["tar"].rsplit("/", 1)[1] for shard in result.shards],
                        [shard["n_success"] for shard in result.shards])
    (output / "sizes.json").write_text(json.dumps(sizes))  # open_clip counts the samples of these shards from it
    for name in sorted(os.listdir(output)):
        if not name.startswith("_") or name.endswith("_stats.json"):
            store.put_file(output / name, f"{folder}/{name}", move=True)
    result.seconds = round(time.monotonic() - started, 3)
    manifest = catalog.publish(folder, result.to_manifest(store, config))
    shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _img2dataset_argv(input_file: Path, output: Path, columns: list[str], config: DownloadConfig) -> list[str]:
    options = {
        "url_list": str(input_file), "input_format": "parquet", "url_col": "url", "caption_col": "text",
        "save_additional_columns": json.dumps(columns), "output_format": "webdataset",
        "output_folder": str(output), "processes_count": config.processes, "thread_count": config.threads,
        "number_sample_per_shard": config.shard_size, "image_size": config.image_size,
        "resize_mode": config.resize_mode, "resize_only_if_bigger": config.resize_only_if_bigger,
        "skip_reencode": config.skip_reencode, "encode_format": config.encode_format,
        "encode_quality": config.encode_quality, "timeout": config.timeout, "retries": config.retries,
        "incremental_mode": "incremental", "enable_wandb": False, "compute_hash": "sha256",
    }
    if config.user_agent_token:
        options["user_agent_token"] = config.user_agent_token
    code = "import sys; from img2dataset.main import main; sys.exit(main())"
    return [sys.executable, "-c", code] + [f"--{k}={v}" for k, v in options.items()]


def _run_img2dataset(input_file: Path, output: Path, staging: Path, columns: list[str],
                     config: DownloadConfig, log) -> None:
    """Run img2dataset as a child process group (its pool workers included); a leftover of an
    interrupted run of this slice is killed first (see :func:`tasks.common.process.run_child`)."""
    env = dict(child_environment(), NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled", PYTHONWARNINGS="ignore")
    log_path = staging / "img2dataset.log"
    returncode = run_child(_img2dataset_argv(input_file, output, columns, config), log_path,
                           staging / "img2dataset.pgid", env=env, log=log)
    if returncode != 0:
        raise StageFailed(f"img2dataset exited with status {returncode} on {input_file}; log {log_path}:\n"
                          f"{log_tail(log_path, 2000)}")


def _expected_shards(n_rows: int, shard_size: int) -> list[int]:
    return list(range((n_rows + shard_size - 1) // shard_size))


def _verify(plan: SlicePlan, rows: pd.DataFrame, output: Path, folder: str, config: DownloadConfig) -> SliceResult:
    """Check every input uid is accounted for exactly once and the tars match the parquets."""
    missing = [s for s in _expected_shards(plan.n_rows, config.shard_size)
               if not (output / f"{s:05d}_stats.json").exists()]
    if missing:
        raise StageFailed(f"slice {plan.index}: img2dataset did not finish shards {missing} in {output}; "
                          "a retry resumes them")
    frames, shards = [], []
    for shard in _expected_shards(plan.n_rows, config.shard_size):
        name = f"{shard:05d}"
        meta = pd.read_parquet(output / f"{name}.parquet")
        n_success = int((meta["status"] == "success").sum())
        count_samples(str(output / f"{name}.tar"), expected=n_success)
        shards.append({
            "shard_id": shard_id(plan.index, slice_key(plan, config), shard),
            "tar": f"{folder}/{name}.tar", "parquet": f"{folder}/{name}.parquet",
            "n_rows": int(len(meta)), "n_success": n_success,
            "content_hash": hashlib.sha256((output / f"{name}.parquet").read_bytes()).hexdigest(),
        })
        frames.append(meta[["uid", "status", "error_message"]])
    meta = pd.concat(frames, ignore_index=True)
    seen = Counter(meta["uid"])
    twice = [u for u, c in seen.items() if c > 1]
    lost = set(rows["uid"]) - set(seen)
    if twice or lost or len(seen) != plan.n_rows:
        raise StageFailed(f"slice {plan.index}: shards in {output} hold {len(twice)} uids twice and miss "
                          f"{len(lost)} input uids")
    reasons = meta.loc[meta["status"] != "success"].assign(
        reason=lambda f: f["error_message"].map(classify_error))
    reason_counts = {status: group["reason"].value_counts().sort_index().to_dict()
                     for status, group in reasons.groupby("status")}
    return SliceResult(
        pool=plan.pool, index=plan.index, key=slice_key(plan, config), folder=folder, n_rows=plan.n_rows,
        status_counts={k: int(v) for k, v in meta["status"].value_counts().sort_index().items()},
        reason_counts={s: {r: int(c) for r, c in d.items()} for s, d in reason_counts.items()},
        shards=shards, rows_hash=plan.content_hash,
    )
