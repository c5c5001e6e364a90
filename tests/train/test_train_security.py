"""Training refuses shard URIs that would reach a shell and run names that would leave the store."""

import io
import shlex
import subprocess
import tarfile

import pytest

from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.train.run import _train_data_arg, check_shard_uri, run_folder, train_clip, training_data
from tasks.train.scales import scale_config

FEW_STEPS = {"samples_seen": 512, "batch_size": 64, "checkpoint_steps": 4, "warmup": 2}


def _tar(path, n: int = 3) -> str:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            info = tarfile.TarInfo(f"{i:05d}.txt")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    return str(path)


def test_a_pipe_injected_in_a_manifest_is_refused_before_anything_runs(tmp_path):
    marker = tmp_path / "injected"
    good = _tar(tmp_path / "00000.tar")
    evil = f"{good}::pipe:touch {marker}"
    manifest = {"name": "poisoned", "content_hash": "h",
                "outputs": {"shards": [{"tar": good, "n_success": 3}, {"tar": evil, "n_success": 3}]}}
    with pytest.raises(InputError, match=r"manifest 'poisoned': training shard '.*00000\.tar::pipe:touch .*'"):
        training_data(manifest)
    store = Store(str(tmp_path / "store"))
    with pytest.raises(InputError, match="chains URLs with '::'"):
        train_clip(store, [good, evil], "h", 6, scale_config("tiny", FEW_STEPS), "poisoned")
    assert not marker.exists()
    assert not store.exists("train") and not store.exists("_staging")  # no process, no staging folder


@pytest.mark.parametrize("uri", ["pipe:touch /tmp/x", "/data/{0..9}.tar", "/data/0.tar;touch x", "/data/$(id).tar",
                                 "s3://b/0.tar|sh", "s3://b/0.tar\ntouch x", "/data/`id`.tar", "/data/0.tar&",
                                 "/data/<0.tar", "gs:pipe:x", "relative:0.tar", "s3://b::file://x", ""])
def test_unplain_shard_uris_are_refused(uri):
    with pytest.raises(InputError, match="training data: training shard"):
        check_shard_uri(uri)


def test_plain_uris_pass_and_a_remote_one_is_one_shell_argument(tmp_path):
    for uri in ("/data/pool/00000.tar", "relative/00000.tar", "file:///data/0.tar", "s3://bucket/pool/0.tar",
                "https://host:8443/a b/0.tar"):
        check_shard_uri(uri)
    shard = _tar(tmp_path / "a shard with 'quotes' and spaces.tar")
    remote = f"local://{shard}"  # fsspec's local filesystem, under a scheme: streamed through the pipe
    parts = _train_data_arg([shard, remote]).split("::")
    assert parts[0] == shard and parts[1].startswith("pipe:")
    command = parts[1].removeprefix("pipe:")
    assert shlex.split(command)[-1] == remote
    streamed = subprocess.run(command, shell=True, capture_output=True, check=True).stdout  # as webdataset runs it
    assert streamed == (tmp_path / "a shard with 'quotes' and spaces.tar").read_bytes()


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", "", "x" * 64, "Upper", "tab\tname"])
def test_run_names_that_are_not_one_folder_name_are_refused(tmp_path, name):
    store = Store(str(tmp_path / "store"))
    shard = _tar(tmp_path / "00000.tar")
    with pytest.raises(InputError, match="run_name"):
        train_clip(store, [shard], "h", 3, scale_config("tiny", FEW_STEPS), name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000.tar"]  # nothing written, inside or outside


def test_run_folder_of_a_good_name():
    assert run_folder("ab-random_2", "h", scale_config("tiny", FEW_STEPS)).startswith("train/ab-random_2-")


# ----- checkpoints are read with weights_only=True: a pickled payload cannot run -------------------------
class _Payload:
    """Unpickling this object creates the file ``marker`` (it stands for any code an attacker wants run)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _poisoned_checkpoint(path, marker) -> str:
    import torch

    torch.save({"epoch": 1, "state_dict": {}, "payload": _Payload(marker)}, path)
    return str(path)


def test_a_poisoned_checkpoint_in_the_store_is_refused_by_create_clip(tmp_path, monkeypatch):
    from tasks.common.models import create_clip

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # even where the environment turned the default off
    marker = tmp_path / "ran"
    store = Store(str(tmp_path / "store"))
    store.put_file(_poisoned_checkpoint(tmp_path / "evil.pt", marker), "train/x/checkpoints/epoch_1.pt")
    with pytest.raises(InputError, match=r"checkpoint .*epoch_1\.pt does not fit model .*Weights only load failed"):
        create_clip("Tiny-ViT-48px", store.uri("train/x/checkpoints/epoch_1.pt"), device="cpu")
    assert not marker.exists()


def test_the_training_child_resumes_only_with_weights_only(tmp_path):
    """open_clip_train resumes with ``pt_load`` (a torch.load without weights_only): the child entry
    forces weights_only, even in an environment that turned torch's default off."""
    import os
    import sys

    marker = tmp_path / "ran"
    checkpoint = _poisoned_checkpoint(tmp_path / "epoch_latest.pt", marker)
    script = ("import sys, open_clip_train.main as m, open_clip_train.file_utils as f\n"
              f"m.main = lambda argv: f.pt_load({checkpoint!r}, map_location='cpu')\n"
              "from tasks.train.launch import main\n"
              "sys.exit(main([]))\n")
    env = dict(os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Weights only load failed" in done.stderr, done.stderr[-2000:]
    assert not marker.exists()
