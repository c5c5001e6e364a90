"""Content hashes and code versions: the inputs of every cache key.

- :func:`hash_text`, :func:`hash_json`: sha256 hex of a string or of canonical JSON.
- :func:`hash_columns`: sha256 of some string columns of a data frame, row by row, in order.
- :func:`code_version`: a hash of the source files of the given modules, so that a cache entry
  made by other code is never reused.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from functools import lru_cache
from typing import Any, Iterable

import pandas as pd


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_json(obj: Any) -> str:
    return hash_text(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str))


def hash_columns(frame: pd.DataFrame, columns: Iterable[str]) -> str:
    """sha256 over the given columns of every row, in row order (nulls hash as empty strings)."""
    digest = hashlib.sha256()
    columns = list(columns)
    digest.update(("\x1f".join(columns) + "\x1e").encode())
    if len(frame):
        joined = frame[columns[0]].fillna("").astype(str)
        for column in columns[1:]:
            joined = joined + "\x1f" + frame[column].fillna("").astype(str)
        digest.update("\x1e".join(joined.tolist()).encode("utf-8"))
    return digest.hexdigest()


@lru_cache(maxsize=None)
def _module_source_hash(module_name: str) -> str:
    module = importlib.import_module(module_name)
    return hash_text(inspect.getsource(module))


def code_version(*module_names: str, extra: dict[str, str] | None = None) -> str:
    """Short hash of the source of the named modules plus ``extra`` (for example package versions)."""
    parts = {name: _module_source_hash(name) for name in sorted(module_names)}
    parts.update(extra or {})
    return hash_json(parts)[:16]
