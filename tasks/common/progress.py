"""Progress of long loops as Prefect progress artifacts (a bar in the run's Artifacts tab).

- :class:`ProgressArtifact`: one artifact of the current flow or task run, updated at most every
  ``min_seconds`` (each update is one API call), always at the end.
- :func:`progress_while`: a thread that polls ``poll()`` (a fraction done, read from files a child
  process writes: a training log, finished shards) and reports it while the block runs.
- :func:`wait_with_progress`: waits for a list of Prefect futures, counting them as they finish.

Used by the @task wrappers and flows only: the stages' algorithms stay free of Prefect. Outside a
flow or task run (plain Python, unit tests) nothing is reported. A failed update is logged, never
raised: progress is for the eyes, the stage's work must not fail for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from typing import Callable, Iterator

log = logging.getLogger(__name__)


def _in_a_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class ProgressArtifact:
    """A progress artifact (0-100 %) named by ``description``, created on the first :meth:`update`."""

    def __init__(self, description: str, min_seconds: float = 5.0):
        self.description, self.min_seconds = description, min_seconds
        self.enabled = _in_a_run()
        self._id = None
        self._sent: float | None = None
        self._last_time = float("-inf")
        self._lock = threading.Lock()

    def update(self, fraction: float, force: bool = False) -> None:
        """Report ``fraction`` (0-1) done; sent if ``min_seconds`` have passed, it is complete, or ``force``."""
        if not self.enabled:
            return
        percent = round(100.0 * min(1.0, max(0.0, fraction)), 1)
        now = time.monotonic()
        with self._lock:
            if percent == self._sent or (not force and percent < 100 and now - self._last_time < self.min_seconds):
                return
            try:
                from prefect.artifacts import create_progress_artifact, update_progress_artifact

                if self._id is None:
                    self._id = create_progress_artifact(percent, description=self.description)
                else:
                    update_progress_artifact(self._id, percent)
            except Exception as error:  # noqa: BLE001 - see the module docstring
                log.warning("progress artifact %r not updated: %r", self.description, error)
                self.enabled = False
                return
            self._sent, self._last_time = percent, now


@contextlib.contextmanager
def progress_while(description: str, poll: Callable[[], float | None],
                   every: float = 5.0) -> Iterator[ProgressArtifact]:
    """Report ``poll()`` (a fraction done, or None when unknown yet) every ``every`` seconds while the block runs.

    A ``poll`` that raises is logged and retried at the next tick. The bar is not completed when the
    block ends: the caller knows whether it succeeded (``bar.update(1.0)``).
    """
    bar = ProgressArtifact(description, min_seconds=every)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            try:
                fraction = poll()
            except Exception as error:  # noqa: BLE001 - files half-written by the child: read again later
                log.debug("progress poll for %r: %r", description, error)
                continue
            if fraction is not None:
                bar.update(fraction)

    # the run's context (which task run the artifact belongs to) is in context variables: take them along
    watcher = threading.Thread(target=contextvars.copy_context().run, args=(watch,), name="progress-artifact",
                               daemon=True)
    if bar.enabled:
        watcher.start()
    try:
        yield bar
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()


def wait_with_progress(futures: list, description: str, min_seconds: float = 5.0) -> None:
    """Wait for every Prefect future in ``futures``, with a progress bar of those finished so far."""
    from prefect.futures import as_completed

    bar = ProgressArtifact(description, min_seconds=min_seconds)
    for done, _ in enumerate(as_completed(futures), 1):
        bar.update(done / len(futures))
