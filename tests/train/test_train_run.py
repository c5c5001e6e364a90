"""Training with open_clip's entry point: a few steps, a real kill then resume, bad inputs."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.common.gpu import visible_gpus
from tasks.common.process import child_environment
from tasks.train.run import cpu_training_threads, run_folder, train_clip, training_data
from tasks.train.scales import scale_config

FEW_STEPS = {"samples_seen": 512, "batch_size": 64, "checkpoint_steps": 4, "warmup": 2}
KILLABLE = {"samples_seen": 2048, "batch_size": 64, "checkpoint_steps": 4, "warmup": 2}


@pytest.fixture(scope="module")
def data(small_pool):
    return training_data(small_pool["manifest"])


@pytest.fixture(scope="module")
def few_steps(data, tmp_path_factory):
    store = Store(str(tmp_path_factory.mktemp("train-store")))
    shards, data_hash, n = data
    return store, train_clip(store, shards, data_hash, n, scale_config("tiny", FEW_STEPS), "few")


def test_trains_and_publishes_checkpoints(few_steps, data):
    store, result = few_steps
    folder = store.relative(result["outputs"]["folder"])
    assert (result["rows"]["epochs"], result["stats"]["samples_per_epoch"], result["rows"]["samples_seen"]) == (2, 256, 512)
    assert result["rows"]["train_samples"] == data[2] and result["stats"]["resumed_from_epoch"] == 0
    assert store.list(f"{folder}/checkpoints") == [f"{folder}/checkpoints/epoch_1.pt",
                                                   f"{folder}/checkpoints/epoch_2.pt"]
    assert result["outputs"]["checkpoint"] == store.uri(f"{folder}/checkpoints/epoch_2.pt")
    assert store.read_json(f"{folder}/manifest.json") == result and result["stage"] == "train"
    assert "Train Epoch: 1" in store.read_bytes(f"{folder}/out.log").decode()
    if not visible_gpus() and "OMP_NUM_THREADS" not in child_environment():
        # torch got the cores the data loader leaves, whatever a Dask cluster left in os.environ
        assert result["stats"]["torch_threads"] == cpu_training_threads(scale_config("tiny", FEW_STEPS).workers)
    assert not store.exists(f"_staging/{folder}")
    import torch

    checkpoint = torch.load(store.path(f"{folder}/checkpoints/epoch_2.pt"), map_location="cpu")
    assert checkpoint["epoch"] == 2 and any("visual" in k for k in checkpoint["state_dict"])


def test_finished_run_is_found_not_retrained(few_steps, data):
    store, result = few_steps
    shards, data_hash, n = data
    started = time.monotonic()
    again = train_clip(store, shards, data_hash, n, scale_config("tiny", FEW_STEPS), "few")
    assert again == result and time.monotonic() - started < 5


def _launch_killable(store: Path, shards, data_hash, n):
    script = textwrap.dedent(f"""
        from tasks.common.store import Store
        from tasks.train.run import train_clip
        from tasks.train.scales import scale_config
        train_clip(Store({str(store)!r}), {shards!r}, {data_hash!r}, {n}, scale_config("tiny", {KILLABLE!r}),
                   "killed", sync_seconds=0.2)
    """)
    return subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_killed_training_resumes_from_the_store_on_a_new_machine(data, tmp_path):
    shards, data_hash, n = data
    config = scale_config("tiny", KILLABLE)
    store = Store(str(tmp_path / "store"))
    folder = run_folder("killed", data_hash, config)
    process = _launch_killable(tmp_path / "store", shards, data_hash, n)
    deadline = time.monotonic() + 300
    while not store.exists(f"{folder}/checkpoints/epoch_2.pt"):
        assert process.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint reached the store in time"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    time.sleep(1)  # the training child dies with its parent
    published = {int(p.rsplit("_", 1)[1][:-3]) for p in store.list(f"{folder}/checkpoints", "epoch_*.pt")}
    assert 2 <= max(published) < config.epochs and not store.exists(f"{folder}/manifest.json")
    # a new machine: nothing local survives, only the store
    import shutil

    shutil.rmtree(store.path(f"_staging/{folder}"))
    result = train_clip(store, shards, data_hash, n, config, "killed")
    assert result["stats"]["resumed_from_epoch"] == max(published)
    assert result["rows"]["epochs"] == config.epochs == 8
    assert result["rows"]["samples_seen"] == config.realised_samples_seen == 2048
    assert len(store.list(f"{folder}/checkpoints", "epoch_*.pt")) == config.epochs
    log = store.read_bytes(f"{folder}/out.log").decode()
    assert "resuming checkpoint" in log and f"Train Epoch: {config.epochs - 1}" in log


def test_bad_training_inputs(data, tmp_path):
    shards, data_hash, n = data
    store = Store(str(tmp_path / "store"))
    config = scale_config("tiny", FEW_STEPS)
    with pytest.raises(InputError, match="no shards"):
        train_clip(store, [], data_hash, 0, config, "bad")
    with pytest.raises(InputError, match="no successful samples"):
        train_clip(store, shards, data_hash, 0, config, "bad")
    with pytest.raises(InputError, match=r"missing\.tar: no such file"):
        train_clip(store, shards + [str(tmp_path / "missing.tar")], data_hash, n, config, "bad")
    (tmp_path / "empty.tar").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.tar: the file is empty"):
        train_clip(store, [str(tmp_path / "empty.tar")], data_hash, n, config, "bad")
    with pytest.raises(InputError, match="model: 'No-Such-Model'"):
        train_clip(store, shards, data_hash, n, scale_config("tiny", {**FEW_STEPS, "model": "No-Such-Model"}), "bad")
    assert not store.exists("train")


def test_training_data_from_a_manifest(small_pool):
    shards, data_hash, n = training_data(small_pool["manifest"])
    assert n == small_pool["manifest"]["rows"]["success"] and data_hash == small_pool["manifest"]["content_hash"]
    assert all(s.endswith(".tar") for s in shards)
    with pytest.raises(InputError, match="no outputs.shards"):
        training_data({"name": "x", "content_hash": "h", "outputs": {}})
