"""Errors a user sees: each names the file, column or parameter that is wrong.

Prefect retries every failure but an :class:`InputError` (bad input fails again); the other
classes say what went wrong and whether a retry may help.
"""


class CurationError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(CurationError, ValueError):
    """The user's input (a file, a column, a parameter) is wrong; nothing was started.

    Only for what the user gave: a retry would fail the same way, so Prefect does not retry it
    (:func:`~tasks.common.prefect_support.retry_unless_input_error`). A failure of the machine,
    the network or the store is never an ``InputError``.
    """


class StoreError(CurationError, OSError):
    """The store cannot be read or written."""


class StageFailed(CurationError, RuntimeError):
    """A stage ran but did not finish its work; finished parts are kept."""


class TransientError(CurationError, RuntimeError):
    """A failure that a later attempt may not meet: out of memory while loading a model, a network
    or object-storage hiccup. Raised (instead of the bare exception) where a message naming what
    was being done helps; Prefect's retries handle it like any error that is not an InputError."""


class GpuSetupError(CurationError, RuntimeError):
    """The NVIDIA driver lists GPUs but a CUDA library (cupy, cuML, torch) cannot use them: a broken
    CUDA install, reported instead of silently running on the CPU. The message names the library
    and how to ask for the CPU path explicitly."""
