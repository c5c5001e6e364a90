"""Is there a usable NVIDIA GPU? One answer for every engine that can run on one."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=None)
def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no cupy, no driver or no device all mean "no GPU"
        return False
