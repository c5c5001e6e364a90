"""Shared by the benchmark scripts: the median wall-clock time of repeated calls."""

from __future__ import annotations

import statistics
import time


def median_seconds(function, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls of ``function`` and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result
