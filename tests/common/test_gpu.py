"""Is a GPU usable: the one decision, from a controlled driver listing and cupy probe.

The probes (``driver_gpus``: nvidia-smi, ``cupy_devices``: cupy) are replaced by monkeypatch;
everything that decides from them (engine selection, Dask cluster, training devices, model
device) runs as it is. nvidia-smi itself is exercised through a stand-in script on ``PATH``.
"""

import os
import stat

import pytest

from tasks.common import gpu
from tasks.common.errors import GpuSetupError


@pytest.fixture
def machine(monkeypatch):
    """``machine(listing, cupy)``: the driver lists ``listing``; cupy sees ``cupy`` devices
    (``None``: not installed; an exception: raised when asked)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    asked = []

    def set_up(listing=(), cupy=None):
        monkeypatch.setattr(gpu, "driver_gpus", lambda: tuple(listing))

        def cupy_devices():
            asked.append(True)
            if isinstance(cupy, Exception):
                raise cupy
            return cupy

        monkeypatch.setattr(gpu, "cupy_devices", cupy_devices)
        return asked

    return set_up


@pytest.fixture
def fresh_probes():
    gpu.driver_gpus.cache_clear()
    yield
    gpu.driver_gpus.cache_clear()


def test_no_driver_means_cpu_without_asking_cupy(machine):
    asked = machine(listing=(), cupy=ImportError("never asked"))
    assert gpu.visible_gpus() == 0
    assert gpu.gpu_available() is False
    assert asked == []


@pytest.mark.parametrize("visible, count", [(None, 2), ("1", 1), ("", 0), ("-1", 0), ("0,5,1", 1),
                                            ("GPU-8a1b,GPU-77c2", 2), ("1,0", 2)])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(machine, monkeypatch, visible, count):
    machine(listing=("0", "1"))
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert gpu.visible_gpus() == count


def test_gpu_with_working_cupy_is_available(machine):
    machine(listing=("0", "1"), cupy=2)
    assert gpu.gpu_available() is True


def test_gpu_without_the_gpu_extra_means_cpu(machine):
    machine(listing=("0",), cupy=None)
    assert gpu.gpu_available() is False


@pytest.mark.parametrize("cupy, says", [(ImportError("libcudart.so.12: cannot open shared object file"),
                                         "cupy fails: ImportError: libcudart.so.12"),
                                        (RuntimeError("cudaErrorInsufficientDriver"), "cupy fails: RuntimeError"),
                                        (0, "cupy sees no CUDA device")])
def test_broken_cuda_install_is_reported_not_turned_into_cpu(machine, cupy, says):
    machine(listing=("0",), cupy=cupy)
    with pytest.raises(GpuSetupError, match="nvidia-smi lists 1 visible GPU") as raised:
        gpu.gpu_available()
    assert says in str(raised.value) and "engine='dask'" in str(raised.value)


def test_hidden_gpus_mean_cpu_even_with_a_broken_cupy(machine, monkeypatch):
    machine(listing=("0",), cupy=ImportError("broken"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu.gpu_available() is False


def test_engine_selection_follows_the_decision(machine):
    from tasks.cluster.kmeans import resolve_engine

    machine(listing=())
    assert resolve_engine("auto") == "dask"
    machine(listing=("0",), cupy=ImportError("libcuda.so.1: cannot open shared object file"))
    with pytest.raises(GpuSetupError, match="cupy fails"):
        resolve_engine("auto")
    with pytest.raises(GpuSetupError, match="cupy fails"):
        resolve_engine("cuml")
    assert resolve_engine("dask") == "dask"  # the explicit CPU path never asks


def test_dask_cluster_refuses_a_broken_install_before_starting(machine):
    from tasks.common.dask_cluster import dask_client

    machine(listing=("0",), cupy=0)
    with pytest.raises(GpuSetupError, match="cupy sees no CUDA device"):
        with dask_client():
            pass


def test_training_counts_the_visible_gpus(machine, monkeypatch):
    from tasks.train.run import _devices

    machine(listing=())
    assert _devices() == ("cpu", 1)
    machine(listing=("0", "1", "2", "3"), cupy=ImportError("training does not need cupy"))
    assert _devices() == ("cuda", 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert _devices() == ("cuda", 1)


def test_model_device_reports_a_torch_that_cannot_use_the_gpus(machine):
    import torch

    from tasks.common.models import model_device

    machine(listing=())
    assert model_device() == "cpu"
    assert model_device("cpu") == "cpu"
    if torch.cuda.is_available():
        pytest.skip("torch uses a GPU here")
    machine(listing=("0",))
    with pytest.raises(GpuSetupError, match=r"lists 1 visible GPU\(s\) but torch .* cannot use them"):
        model_device()


def _fake_nvidia_smi(folder, script: str) -> str:
    path = folder / "nvidia-smi"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"


def test_driver_listing_is_read_from_nvidia_smi(tmp_path, monkeypatch, fresh_probes):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, 'printf "0\\n1\\n"\n'))
    assert gpu.driver_gpus() == ("0", "1")


def test_failing_or_missing_nvidia_smi_means_no_driver(tmp_path, monkeypatch, fresh_probes):
    monkeypatch.setenv("PATH", _fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9\n"))
    assert gpu.driver_gpus() == ()
    gpu.driver_gpus.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert gpu.driver_gpus() == ()
