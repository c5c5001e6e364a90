"""One resumable CLIP training run with open_clip on webdataset shards.

In:  the store, the training shards (URIs of ``.tar`` files from a pool or subset manifest),
     their content hash and sample count, a :class:`~tasks.train.scales.TrainConfig` and a run name.
Out: the run's folder (:meth:`~tasks.common.catalog.Catalog.training_folder`) with
     ``checkpoints/epoch_<n>.pt`` (one per virtual epoch, each uploaded once complete), ``out.log``
     (open_clip's log) and, last, the stage's manifest (the final checkpoint, samples seen, speed).
     The key hashes the data, the config and the code version, so a finished run is found again
     instead of retrained.

Preemption: open_clip runs in a child process writing to a local staging folder, with
``--save-most-recent`` (an atomic ``epoch_latest.pt``) and ``--resume latest``. Run again after a
kill and it resumes from the latest checkpoint: the local one, or, on a new machine, the latest
one in the store. The number of epochs, hence of samples seen, is fixed by the config, so a
resumed run sees as many samples as an uninterrupted one (the interrupted epoch is redone).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
import threading
import time
from pathlib import Path

import fsspec

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError, StageFailed
from tasks.common.fscat import OPTIONS_VARIABLE
from tasks.common.gpu import visible_gpus
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.process import child_environment, log_tail, run_child
from tasks.common.store import Store
from tasks.common.models import known_models
from tasks.train.scales import TrainConfig

EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pt$")
PLAIN_REMOTE_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:]")  # scheme://, then no second scheme
UNSAFE_URI_CHARACTERS = set("{};|&$`<>")  # braces (webdataset expands them) and shell metacharacters
SPEED = re.compile(r"Batch \(t\): [\d.]+, ([\d.]+)/s,")
TORCH_THREADS = re.compile(r"^torch threads: (\d+)$", re.MULTILINE)


STAGE_VERSION = 2  # bump when a change alters what a run trains or writes


def stage_code_version() -> str:
    return code_version("train", STAGE_VERSION, ("open_clip_torch", "torch"))


# Settings that do not change what is trained: the scale's label and how often open_clip logs.
NOT_IN_KEY = ("scale", "log_every_n_steps")


def training_key(data_hash: str, config: TrainConfig) -> str:
    trained = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    return hash_json({"data": data_hash, "config": trained, "code": stage_code_version()})


def run_folder(name: str, data_hash: str, config: TrainConfig) -> str:
    """The run's folder (:meth:`~tasks.common.catalog.Catalog.training_folder`). ``name`` follows the rule
    of every name in the store (:func:`~tasks.common.catalog.check_name`: 1-63 lower-case letters,
    digits, ``-``, ``_``), so it is one folder name, never a path; anything else is an
    :class:`InputError` naming ``run_name``."""
    return Catalog.training_folder(name, training_key(data_hash, config))


def check_shard_uri(uri: str, source: str = "training data") -> None:
    """Refuse a shard URI that is not a plain local path or a plain ``scheme://`` URI.

    open_clip hands ``--train-data`` to webdataset, which splits it on ``::``, expands braces and
    runs ``pipe:`` URLs through a shell: a URI from a manifest must carry none of that.
    """
    if not isinstance(uri, str) or not uri:
        problem = "is not a URI"
    elif any(ord(c) < 32 or c in UNSAFE_URI_CHARACTERS for c in uri):
        problem = "holds a brace, shell metacharacter or control character"
    elif "::" in uri:
        problem = "chains URLs with '::'"
    elif uri.startswith("pipe:"):
        problem = "is a 'pipe:' command"
    elif ":" in uri and not PLAIN_REMOTE_URI.match(uri):
        problem = "is neither a local path nor a plain scheme:// URI"
    else:
        return
    raise InputError(f"{source}: training shard {uri!r} {problem}; shards must be plain local paths or "
                     f"scheme:// URIs")


def check_shards(shards: list[str], n_samples: int, storage_options: dict | None = None) -> None:
    """Every shard URI is plain, every shard exists and is not empty, and there is something to train on."""
    if not shards:
        raise InputError("training data: the manifest lists no shards (an empty pool or subset)")
    for shard in shards:
        check_shard_uri(shard)
    if n_samples < 1:
        raise InputError(f"training data: the shards hold no successful samples ({shards[0]} ...)")
    for shard in shards:
        fs, path = fsspec.core.url_to_fs(shard, **(storage_options or {}) if "://" in shard else {})
        if not fs.exists(path):
            raise InputError(f"training shard {shard}: no such file")
        if fs.size(path) == 0:
            raise InputError(f"training shard {shard}: the file is empty")


def training_data(manifest: dict) -> tuple[list[str], str, int]:
    """(shard URIs holding samples, content hash, number of samples) of a pool or subset manifest.

    Every shard URI must be a plain local path or ``scheme://`` URI (:func:`check_shard_uri`): an
    :class:`InputError` names the manifest and the shard otherwise.
    """
    shards = manifest.get("outputs", {}).get("shards")
    if shards is None:
        raise InputError(f"training data: manifest {manifest.get('name')!r} lists no outputs.shards")
    if any("n_success" not in s for s in shards):
        raise InputError(f"training data: manifest {manifest.get('name')!r} has shards without n_success "
                         "(their sample count); it was not written by this pipeline")
    used = [s for s in shards if s["n_success"] > 0]  # the one rule, as the catalog's shards_with_samples
    for shard in used:
        check_shard_uri(shard.get("tar"), f"training data: manifest {manifest.get('name')!r}")
    return [s["tar"] for s in used], manifest["content_hash"], sum(int(s["n_success"]) for s in used)


def fscat_environment(options: dict) -> dict[str, str]:
    """The store's fsspec options (credentials included) for ``tasks.common.fscat`` in the training child:
    passed in its environment, never on a command line that other users can list."""
    return {OPTIONS_VARIABLE: json.dumps(options)} if options else {}


def _train_data_arg(shards: list[str]) -> str:
    """open_clip's ``--train-data``: local paths, or a pipe that streams a remote shard through fsspec.

    Each shard passes :func:`check_shard_uri` and is shell-quoted in the pipe, so it stays one argument.
    """
    parts = []
    for shard in shards:
        check_shard_uri(shard)
        if "://" in shard and not shard.startswith("file://"):
            parts.append(f"pipe:{shlex.quote(sys.executable)} -m tasks.common.fscat {shlex.quote(shard)}")
        else:
            parts.append(shard.removeprefix("file://"))
    return "::".join(parts)


def _devices() -> tuple[str, int]:
    """("cuda", number of visible GPUs) or ("cpu", 1), counted by :func:`~tasks.common.gpu.visible_gpus`
    (the driver, not torch: importing torch here would cost the training child seconds of CPU)."""
    count = visible_gpus()
    return ("cuda", count) if count else ("cpu", 1)


def _torch_threads(log_text: str) -> int | None:
    """The thread count the training child reported (:mod:`tasks.train.launch`), if it did."""
    found = TORCH_THREADS.findall(log_text)
    return int(found[-1]) if found else None


def cpu_training_threads(loader_workers: int) -> int:
    """torch's threads for a training on the CPU: the cores its data loader processes leave free (at least one).

    Measured on 2 cores with one loader process: one torch thread trains the ``tiny`` model at 190
    samples/s, two at 137 (the three busy threads stall each other at every parallel region).
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - loader_workers)


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
                          for p in store.list(Catalog.checkpoints_folder(folder), "epoch_*.pt")} if store.exists(
            Catalog.checkpoints_folder(folder)) else set()

    def publish(self, final: bool = False) -> None:
        files = _epoch_files(self.checkpoints)
        latest = self.checkpoints / "epoch_latest.pt"
        latest_time = latest.stat().st_mtime_ns if latest.exists() else -1
        newest = max(files, default=None)
        for epoch, path in sorted(files.items()):
            done = epoch != newest or final or latest_time >= path.stat().st_mtime_ns
            if done and epoch not in self.published:
                self.store.put_file(path, Catalog.checkpoint(self.folder, epoch))
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
    with publisher.store.open(Catalog.checkpoint(publisher.folder, epoch)) as src, open(tmp, "wb") as dst:
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
               name: str, log=print, sync_seconds: float = 5.0) -> dict:
    """Train (or resume, or find finished) the run; return its manifest."""
    config.validate()
    catalog = Catalog(store)
    folder = run_folder(name, data_hash, config)
    done = catalog.finished(folder, log)
    if done is not None:
        return done
    check_shards(shards, n_samples, store.fsspec_options())
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
    env = dict(child_environment(), PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
               **fscat_environment(store.fsspec_options()))
    if device == "cpu" and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(cpu_training_threads(config.workers))
    syncer.start()
    try:
        returncode = run_child(_command(args, world), log_path, staging / "train.pgid", env=env, log=log)
    finally:
        stop.set()
        syncer.join()
    if returncode != 0:
        raise StageFailed(f"training run {folder} failed (exit status {returncode}); finished checkpoints are "
                          f"kept and a rerun resumes. Log {log_path}:\n{log_tail(log_path)}")
    text = log_path.read_text(errors="replace")
    publisher.publish(final=True)
    if config.epochs not in publisher.published:
        raise StageFailed(f"training run {folder}: open_clip exited without the final checkpoint "
                          f"epoch_{config.epochs}.pt; log {log_path}")
    outputs = {"folder": store.uri(folder), "checkpoint": store.uri(catalog.checkpoint(folder, config.epochs))}
    out_log = staging / "run" / "out.log"
    if out_log.exists():
        outputs["log"] = store.put_file(out_log, f"{folder}/out.log")
    speeds = [float(s) for s in SPEED.findall(text)]
    manifest = Manifest(
        stage="train", name=name, store=store.root, config=config.to_dict(), code_version=stage_code_version(),
        inputs={"data": data_hash, "shards": len(shards)}, outputs=outputs,
        rows={"train_samples": n_samples, "samples_seen": config.realised_samples_seen, "epochs": config.epochs},
        stats={"samples_per_epoch": config.samples_per_epoch, "device": f"{device}x{world}",
               "seconds": round(time.monotonic() - started, 2),
               "samples_per_second": round(sum(speeds[1:]) / len(speeds[1:]), 1) if len(speeds) > 1 else None,
               "resumed_from_epoch": resumed_from, "torch_threads": _torch_threads(text)})
    published = catalog.publish(folder, manifest)
    shutil.rmtree(staging, ignore_errors=True)
    return published
