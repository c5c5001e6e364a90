"""Errors a user sees: each names the file, column or parameter that is wrong."""


class CurationError(Exception):
    """Base class of every error this project raises on purpose."""


class InputError(CurationError, ValueError):
    """The input (a file, a column, a parameter) is wrong; nothing was started."""


class StoreError(CurationError, OSError):
    """The store cannot be read or written."""


class StageFailed(CurationError, RuntimeError):
    """A stage ran but did not finish its work; finished parts are kept."""
