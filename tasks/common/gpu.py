"""Is there a usable NVIDIA GPU? One answer for every engine that can run on one.

In:  the NVIDIA driver's list of GPUs (``nvidia-smi``), ``CUDA_VISIBLE_DEVICES`` and, where the
     ``gpu`` extra is installed, the devices cupy sees.
Out: :func:`visible_gpus`: how many GPUs this process may use, asked of the driver alone (no CUDA
     library is imported, so the training parent process counts GPUs with it cheaply);
     :func:`gpu_available`: whether the GPU engines (cupy, cuML, Dask-CUDA) can run here.

No driver, no GPU, GPUs hidden by ``CUDA_VISIBLE_DEVICES`` or no ``gpu`` extra: the CPU engines,
silently. A driver that lists GPUs while the installed cupy fails to import or sees no device is a
broken CUDA install: :class:`~tasks.common.errors.GpuSetupError`, never a quiet fall back to the CPU.
The probes (:func:`driver_gpus`, :func:`cupy_devices`) are asked once per process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from functools import lru_cache

from tasks.common.errors import GpuSetupError

CPU_PATH = ("engine='dask' for clustering, gpu=False for a Dask cluster, device='cpu' for a model, "
            "or CUDA_VISIBLE_DEVICES= (empty) to hide the GPUs from every stage")


@lru_cache(maxsize=None)
def driver_gpus() -> tuple[str, ...]:
    """Indices of the GPUs the NVIDIA driver lists; empty without nvidia-smi or a working driver."""
    try:
        listing = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(listing.split())


@lru_cache(maxsize=None)
def cupy_devices() -> int | None:
    """CUDA devices cupy sees; ``None`` where cupy (the ``gpu`` extra) is not installed.

    Raises whatever cupy raises where it is installed but cannot import or reach the driver.
    """
    if importlib.util.find_spec("cupy") is None:
        return None
    import cupy

    return int(cupy.cuda.runtime.getDeviceCount())


def visible_gpus() -> int:
    """The driver's GPUs that ``CUDA_VISIBLE_DEVICES`` leaves visible to this process (0: none).

    As CUDA reads that variable: a comma-separated list of indices or ``GPU-``/``MIG-`` UUIDs,
    cut at the first entry that names no device (so ``""`` and ``"-1"`` hide them all).
    """
    listed = driver_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(listed)
    count = 0
    for entry in (e.strip() for e in visible.split(",")):
        index = int(entry) if entry.lstrip("-").isdigit() else None
        if not entry or (index is not None and not 0 <= index < len(listed)):
            break
        count += 1
    return min(count, len(listed))


def gpu_setup_error(gpus: int, what: str) -> GpuSetupError:
    """The error for a driver that lists ``gpus`` GPUs which ``what`` (a library) cannot use."""
    return GpuSetupError(f"nvidia-smi lists {gpus} visible GPU(s) but {what}: the CUDA install is broken "
                         f"(the CUDA libraries must match the driver). Repair it, or run on the CPU explicitly: "
                         f"{CPU_PATH}.")


def gpu_available() -> bool:
    """True when the driver lists a visible GPU and cupy (the ``gpu`` extra) sees it.

    False without a driver, a visible GPU or cupy; raises :class:`GpuSetupError` when the driver
    lists GPUs but the installed cupy fails to import or sees no device.
    """
    gpus = visible_gpus()
    if not gpus:
        return False
    try:
        seen = cupy_devices()
    except Exception as exc:  # noqa: BLE001 - an ImportError or a CUDA runtime error: both a broken install
        raise gpu_setup_error(gpus, f"cupy fails: {type(exc).__name__}: {exc}") from exc
    if seen is None:
        return False
    if seen == 0:
        raise gpu_setup_error(gpus, "cupy sees no CUDA device")
    return True
