"""Content hashes and code versions: the inputs of every cache key.

- :func:`hash_text`, :func:`hash_json`: sha256 hex of a string or of canonical JSON.
- :func:`hash_columns`: sha256 of some string columns of a data frame, row by row, in order.
- :func:`code_version`: a stage's declared version and its libraries' versions, so that a cache
  entry made by code that writes something else is never reused.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
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
def code_version(stage: str, version: int, libraries: tuple[str, ...] = ()) -> str:
    """A stage's code version for cache keys: its declared ``version`` and its libraries' versions.

    The declared version is bumped when a change alters what the stage writes; refactors leave it
    alone, so they do not throw away finished work (a pool's downloads, a training run). A new
    release of a library that makes the output (img2dataset, open_clip, torch) changes it too.
    """
    return hash_json({"stage": stage, "version": version,
                      "libraries": {name: metadata.version(name) for name in libraries}})[:16]
