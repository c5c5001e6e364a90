"""Child processes that die with their parent."""

from __future__ import annotations

import ctypes
import signal


def die_with_parent() -> None:
    """``preexec_fn`` for a child: SIGKILL it when the parent dies (Linux), so no orphan keeps working."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
