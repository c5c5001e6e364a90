"""Manifests: the small JSON record a stage writes next to its output and returns.

A manifest says what a stage made (URIs and row counts), from what (input URIs and content
hashes), with which config and which code version, plus free-form statistics. Its own
``content_hash`` covers all of that except the creation time, so two runs that made the same
thing have the same hash, and a downstream cache key can be built from it.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.common.hashing import hash_json
from tasks.common.store import Store


@dataclass
class Manifest:
    stage: str
    name: str
    store: str
    config: dict[str, Any]
    code_version: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat())
    content_hash: str = ""

    def __post_init__(self) -> None:
        if not self.content_hash:
            self.content_hash = self.compute_hash()

    def compute_hash(self) -> str:
        body = asdict(self)
        body.pop("created_at")
        body.pop("content_hash")
        return hash_json(body)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        return cls(**data)

    def write(self, store: Store, rel: str) -> str:
        """Write atomically to ``rel`` in ``store``; return its URI."""
        return store.write_json(rel, self.to_dict())

    @classmethod
    def read(cls, store: Store, rel: str) -> "Manifest":
        return cls.from_dict(store.read_json(rel))
