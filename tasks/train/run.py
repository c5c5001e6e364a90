"""One resumable CLIP training run with open_clip on webdataset shards.

In:  the store, the training shards (URIs of ``.tar`` files from a pool or subset manifest),
     their content hash and sample count, a :class:`~tasks.train.scales.TrainConfig` and a run name.
Out: ``train/<name>-<key>/`` in the store with ``checkpoints/epoch_<n>.pt`` (one per virtual
     epoch, each uploaded once complete), ``out.log`` (open_clip's log) and, last,
     ``_SUCCESS.json``: the :class:`TrainResult`. The key hashes the data, the config and the code
     version, so a finished run is found again instead of retrained.

Preemption: open_clip runs in a child process writing to a local staging folder, with
``--save-most-recent`` (an atomic ``epoch_latest.pt``) and ``--resume latest``. Run again after a
kill and it resumes from the latest checkpoint: the local one, or, on a new machine, the latest
one in the store. The number of epochs, hence of samples seen, is fixed by the config, so a
resumed run sees as many samples as an uninterrupted one (the interrupted epoch is redone).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec

from tasks.common.errors import InputError, StageFailed
from tasks.common.hashing import code_version, hash_json
from tasks.common.process import die_with_parent
from tasks.common.store import Store
from tasks.train.launch import known_models
from tasks.train.scales import TrainConfig

EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
SPEED = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s,")


@dataclass
class TrainResult:
    run: str
    folder: str
    checkpoint: str
    model: str
    config: dict
    data_hash: str
    n_train_samples: int
    epochs: int
    samples_per_epoch: int
    samples_seen: int
    device: str
    seconds: float
    samples_per_second: float | None
    resumed_from_epoch: int

    def to_dict(self) -> dict:
        return asdict(self)


STAGE_VERSION = 1  # bump when a change alters what a run trains or writes


def stage_code_version() -> str:
    return code_version("train", STAGE_VERSION, ("open_clip_torch", "torch"))


def training_key(data_hash: str, config: TrainConfig) -> str:
    return hash_json({"data": data_hash, "config": config.to_dict(), "code": stage_code_version()})


def run_folder(name: str, data_hash: str, config: TrainConfig) -> str:
    return f"train/{name}-{training_key(data_hash, config)[:16]}"


def check_shards(shards: list[str], n_samples: int) -> None:
    """Every shard exists and is not empty, and there is something to train on."""
    if not shards:
        raise InputError("training data: the manifest lists no shards (an empty pool or subset)")
    if n_samples < 1:
        raise InputError(f"training data: the shards hold no successful samples ({shards[0]} ...)")
    for shard in shards:
        fs, path = fsspec.core.url_to_fs(shard)
        if not fs.exists(path):
            raise InputError(f"training shard {shard}: no such file")
        if fs.size(path) == 0:
            raise InputError(f"training shard {shard}: the file is empty")


def _train_data_arg(shards: list[str]) -> str:
    """open_clip's ``--train-data``: local paths, or a pipe that streams a remote shard through fsspec."""
    parts = []
    for shard in shards:
        if "://" in shard and not shard.startswith("file://"):
            parts.append(f"pipe:{sys.executable} -m tasks.common.fscat {shard}")
        else:
            parts.append(shard.removeprefix("file://"))
    return "::".join(parts)


def _devices() -> tuple[str, int]:
    """("cuda", number of visible GPUs) or ("cpu", 1), asked of nvidia-smi: importing torch here would
    cost the training child seconds of CPU on a small machine."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return "cpu", 1
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    count = len([d for d in visible.split(",") if d.strip()]) if visible is not None else len(listing)
    return ("cuda", count) if count else ("cpu", 1)


def open_clip_args(config: TrainConfig, train_data: str, logs: Path, device: str, world: int) -> list[str]:
    precision = config.precision if config.precision != "auto" else ("amp" if device == "cuda" else "fp32")
    args = [
        "--train-data", train_data, "--dataset-type", "webdataset", "--dataset-resampled",
        "--train-num-samples", str(config.samples_per_epoch), "--epochs", str(config.epochs),
        "--batch-size", str(config.batch_size // world), "--lr", str(config.lr), "--warmup", str(config.warmup),
        "--wd", str(config.wd), "--model", config.model, "--precision", precision,
        "--workers", str(config.workers), "--seed", str(config.seed), "--logs", str(logs), "--name", "run",
        "--save-frequency", "1", "--save-most-recent", "--resume", "latest",
        "--log-every-n-steps", str(config.log_every_n_steps),
    ]
    if device == "cpu":
        args += ["--device", "cpu"]
    if world > 1:
        args += ["--local-loss", "--gather-with-grad", "--ddp-static-graph"]
    if config.beta2 is not None:
        args += ["--beta2", str(config.beta2)]
    if config.grad_clip_norm is not None:
        args += ["--grad-clip-norm", str(config.grad_clip_norm)]
    return args + list(config.extra_args)


def _epoch_files(checkpoints: Path) -> dict[int, Path]:
    found = {}
    if checkpoints.exists():
        for path in checkpoints.iterdir():
            match = EPOCH_FILE.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return found


class CheckpointPublisher:
    """Copies each finished ``epoch_<n>.pt`` from the staging folder to the store, once.

    open_clip writes ``epoch_<n>.pt`` in place and then replaces ``epoch_latest.pt``, so an epoch
    file is finished when a later epoch exists or ``epoch_latest.pt`` is newer than it.
    """

    def __init__(self, store: Store, folder: str, checkpoints: Path):
        self.store, self.folder, self.checkpoints = store, folder, checkpoints
        self.published = {int(EPOCH_FILE.match(p.rsplit("/", 1)[1]).group(1))
                          for p in store.list(f"{folder}/checkpoints", "epoch_*.pt")} if store.exists(
            f"{folder}/checkpoints") else set()

    def publish(self, final: bool = False) -> None:
        files = _epoch_files(self.checkpoints)
        latest = self.checkpoints / "epoch_latest.pt"
        latest_time = latest.stat().st_mtime_ns if latest.exists() else -1
        newest = max(files, default=None)
        for epoch, path in sorted(files.items()):
            done = epoch != newest or final or latest_time >= path.stat().st_mtime_ns
            if done and epoch not in self.published:
                self.store.put_file(path, f"{self.folder}/checkpoints/{path.name}")
                self.published.add(epoch)

    def latest_in_store(self) -> int | None:
        return max(self.published, default=None)


def _restore_from_store(publisher: CheckpointPublisher, checkpoints: Path, log) -> int:
    """On a machine without local progress, fetch the store's latest checkpoint as epoch_latest.pt."""
    latest_local = checkpoints / "epoch_latest.pt"
    if latest_local.exists():
        return max(_epoch_files(checkpoints), default=0)
    epoch = publisher.latest_in_store()
    if epoch is None:
        return 0
    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / "restore.tmp"
    with publisher.store.open(f"{publisher.folder}/checkpoints/epoch_{epoch}.pt") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
    os.replace(tmp, latest_local)
    log(f"resuming from epoch {epoch} restored from the store")
    return epoch


def _command(args: list[str], world: int) -> list[str]:
    if world > 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", "-m",
                "tasks.train.launch", *args]
    return [sys.executable, "-m", "tasks.train.launch", *args]


def train_clip(store: Store, shards: list[str], data_hash: str, n_samples: int, config: TrainConfig,
               name: str, log=print, sync_seconds: float = 5.0) -> TrainResult:
    """Train (or resume, or find finished) the run; return its result."""
    config.validate()
    folder = run_folder(name, data_hash, config)
    marker = f"{folder}/_SUCCESS.json"
    if store.exists(marker):
        return TrainResult(**store.read_json(marker))
    check_shards(shards, n_samples)
    if config.model not in known_models():
        raise InputError(f"training parameter model: {config.model!r} is not an open_clip model config")

    staging = store.staging_path(folder)
    checkpoints = staging / "run" / "checkpoints"
    publisher = CheckpointPublisher(store, folder, checkpoints)
    resumed_from = _restore_from_store(publisher, checkpoints, log)
    device, world = _devices()
    args = open_clip_args(config, _train_data_arg(shards), staging, device, world)
    log_path = staging / "train.log"
    staging.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stop = threading.Event()

    def keep_publishing():
        while not stop.wait(sync_seconds):
            publisher.publish()

    syncer = threading.Thread(target=keep_publishing, name="checkpoint-publisher", daemon=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(_command(args, world), stdout=log_file, stderr=subprocess.STDOUT,
                                   env=env, start_new_session=True,
                                   preexec_fn=die_with_parent if sys.platform.startswith("linux") else None)
        syncer.start()
        try:
            returncode = process.wait()
        finally:
            stop.set()
            syncer.join()
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    text = log_path.read_text(errors="replace")
    if returncode != 0:
        raise StageFailed(f"training run {folder} failed (exit status {returncode}); finished checkpoints are "
                          f"kept and a rerun resumes. Log {log_path}:\n{text[-3000:]}")
    publisher.publish(final=True)
    if config.epochs not in publisher.published:
        raise StageFailed(f"training run {folder}: open_clip exited without the final checkpoint "
                          f"epoch_{config.epochs}.pt; log {log_path}")
    out_log = staging / "run" / "out.log"
    if out_log.exists():
        store.put_file(out_log, f"{folder}/out.log")
    speeds = [float(s) for s in SPEED.findall(text)]
    result = TrainResult(
        run=name, folder=store.uri(folder), checkpoint=store.uri(f"{folder}/checkpoints/epoch_{config.epochs}.pt"),
        model=config.model, config=config.to_dict(), data_hash=data_hash, n_train_samples=n_samples,
        epochs=config.epochs, samples_per_epoch=config.samples_per_epoch,
        samples_seen=config.realised_samples_seen, device=f"{device}x{world}",
        seconds=round(time.monotonic() - started, 2),
        samples_per_second=round(sum(speeds[1:]) / len(speeds[1:]), 1) if len(speeds) > 1 else None,
        resumed_from_epoch=resumed_from,
    )
    store.write_json(marker, result.to_dict())
    shutil.rmtree(staging, ignore_errors=True)
    return result
