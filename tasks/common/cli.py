"""The flows' command lines: bad input refused before anything starts, and said in one line.

In:  a flow module's ``main(argv)``: it parses its options with :class:`CliParser`, runs the
     stages' own checks on every parameter it can check without Prefect or Dask (names, files and
     their columns, JSON options, configurations: the functions the flow's tasks call), then calls
     the flow. Decorated with :func:`command_line`.
Out: a refused run prints one line on stderr, ``error: <message>``, naming the file, column or
     parameter, and exits with status 2 (argparse's status for a bad option): a bad option, an
     :class:`~tasks.common.errors.InputError` from a check before the flow, or one raised by the
     flow itself. Any other error the project raises on purpose (a stage that ran but failed, a
     store that cannot be written) is one line too, with status 1. Nothing else is caught: a bug
     keeps its traceback.

While a flow runs, Prefect logs a failed task's or flow's exception with its traceback, to the
terminal and to the API. For the project's own errors (:class:`~tasks.common.errors.CurationError`)
the traceback adds nothing to the message, so :func:`plain_console_errors` has Prefect's console
handler print their log records without it; the API handler, and so the UI, keeps the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import logging
import sys
from typing import Callable, Iterator, NoReturn, TypeVar

from tasks.common.errors import CurationError, InputError

INPUT_ERROR_STATUS = 2  # a bad option or parameter, as argparse exits
FAILED_STATUS = 1  # the run started and a stage failed

Main = TypeVar("Main", bound=Callable)


class CliParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line, ``error: <prog>: <message>``, status 2."""

    def error(self, message: str) -> NoReturn:
        refuse(f"{self.prog}: {message} (see --help)", INPUT_ERROR_STATUS)


def refuse(message: str, status: int = INPUT_ERROR_STATUS) -> NoReturn:
    """Print ``error: <message>`` as one line on stderr and exit with ``status``."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    sys.stderr.write(f"error: {line}\n")
    sys.stderr.flush()
    raise SystemExit(status)


def command_line(main: Main) -> Main:
    """Decorate a flow's ``main``: its InputError ends the process as one line with status 2, any other
    :class:`~tasks.common.errors.CurationError` as one line with status 1; Prefect's console shows
    those errors without tracebacks while it runs."""

    @functools.wraps(main)
    def run(*args, **kwargs):
        with plain_console_errors():
            try:
                return main(*args, **kwargs)
            except InputError as exc:
                refuse(str(exc), INPUT_ERROR_STATUS)
            except CurationError as exc:
                refuse(str(exc), FAILED_STATUS)

    return run  # type: ignore[return-value]


class _WithoutExpectedTracebacks(logging.Formatter):
    """Formats as ``formatter`` does, but a record carrying a CurationError without its traceback."""

    def __init__(self, formatter: logging.Formatter):
        super().__init__()
        self.formatter = formatter

    def format(self, record: logging.LogRecord) -> str:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CurationError):
            record = copy.copy(record)  # the other handlers (the API's) still get the traceback
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return self.formatter.format(record)


@contextlib.contextmanager
def plain_console_errors() -> Iterator[None]:
    """While inside, Prefect's console handlers print the project's own errors as their log line alone."""
    from prefect.logging.handlers import PrefectConsoleHandler

    changed = []
    for logger in (logging.getLogger(), logging.getLogger("prefect")):
        for handler in logger.handlers:
            if isinstance(handler, PrefectConsoleHandler) and handler.formatter is not None \
                    and not isinstance(handler.formatter, _WithoutExpectedTracebacks):
                changed.append((handler, handler.formatter))
                handler.setFormatter(_WithoutExpectedTracebacks(handler.formatter))
    try:
        yield
    finally:
        for handler, formatter in changed:
            handler.setFormatter(formatter)
