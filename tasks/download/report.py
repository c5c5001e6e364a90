"""Failure reasons and the pool's download summary.

- :func:`classify_error`: img2dataset's free-text ``error_message`` -> a short reason
  (``http_404``, ``timeout``, ``truncated``, ``not_an_image``, ...).
- :func:`summarise_slices`: slice results -> totals per status and per (status, reason), and
  the rows of the table artifact.
"""

from __future__ import annotations

import re
from collections import Counter

STATUSES = ("success", "failed_to_download", "failed_to_resize")

_PATTERNS = (
    (re.compile(r"HTTP Error (\d{3})"), lambda m: f"http_{m.group(1)}"),
    (re.compile(r"timed out|timeout", re.I), "timeout"),
    (re.compile(r"IncompleteRead|Connection broken|RemoteDisconnected", re.I), "truncated"),
    (re.compile(r"Image decoding error|cannot identify image", re.I), "not_an_image"),
    (re.compile(r"Connection refused", re.I), "connection_refused"),
    (re.compile(r"Name or service not known|nodename nor servname|getaddrinfo", re.I), "dns"),
    (re.compile(r"CERTIFICATE_VERIFY_FAILED|SSL", re.I), "ssl"),
    (re.compile(r"X-Robots-Tag", re.I), "opted_out"),
    (re.compile(r"hash mismatch", re.I), "hash_mismatch"),
    (re.compile(r"image too small", re.I), "too_small"),
    (re.compile(r"aspect ratio too large", re.I), "aspect_ratio"),
    (re.compile(r"image area too large", re.I), "too_large"),
    (re.compile(r"unknown url type|no host given", re.I), "bad_url"),
)


def classify_error(message: str | None) -> str:
    if not message:
        return "unknown"
    for pattern, reason in _PATTERNS:
        match = pattern.search(message)
        if match:
            return reason(match) if callable(reason) else reason
    return "other"


def summarise_slices(results: list[dict]) -> dict:
    """Totals over slice results (as dicts): ``status_counts``, ``reason_counts`` and ``table`` rows."""
    status = Counter()
    reasons: dict[str, Counter] = {}
    for result in results:
        status.update(result["status_counts"])
        for state, counts in result["reason_counts"].items():
            reasons.setdefault(state, Counter()).update(counts)
    total = sum(status.values())
    table = []
    for state in STATUSES + tuple(sorted(set(status) - set(STATUSES))):
        count = status.get(state, 0)
        table.append({"status": state, "reason": "(all)", "count": count,
                      "share": round(count / total, 4) if total else 0.0})
        for reason, n in sorted(reasons.get(state, {}).items(), key=lambda kv: (-kv[1], kv[0])):
            table.append({"status": state, "reason": reason, "count": n, "share": round(n / total, 4)})
    return {
        "n_rows": total,
        "status_counts": {k: int(status.get(k, 0)) for k in STATUSES} | {k: int(v) for k, v in status.items()},
        "reason_counts": {k: dict(sorted(v.items())) for k, v in sorted(reasons.items())},
        "table": table,
    }
