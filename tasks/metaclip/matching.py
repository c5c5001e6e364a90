"""MetaCLIP substring matching of texts against metadata entries.

In:  texts (captions; ``None``, NaN or ``pd.NA`` counts as an empty text) and metadata entries.
Out: :class:`Matches`, for every text the sorted set of ids (positions in the entry list) of the
     entries it matches, stored as CSR arrays.

A text matches an entry when ``" " + entry + " "`` is a substring of the normalised text
(:func:`normalise`; METHODS.md section 3). Matching is case-sensitive and a text yields each
entry at most once. :func:`match_naive` is the reference; :class:`EntryMatcher` gives exactly the
same result with one Aho-Corasick pass over a whole batch of texts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterable, Mapping, Sequence

import ahocorasick
import numpy as np

from tasks.common.errors import InputError

PUNCTUATION = ",.;:?!`"
WHITESPACE = "\t\n\r"
SEPARATOR = "\x00"  # between texts in a batch; no entry may contain it
BATCH_TEXTS = 10_000

# Ten str.replace calls: str.translate with multi-character replacements takes CPython's slow
# per-character path (about 8 us for a 100-character caption, against 1.5 us for these).
_REPLACEMENTS = tuple((ch, f" {ch} ") for ch in PUNCTUATION) + tuple((ch, " ") for ch in WHITESPACE)


def normalise(text: str) -> str:
    """Pad with a space at both ends, space out ``, . ; : ? ! ` `` and turn tab/LF/CR into spaces."""
    for old, new in _REPLACEMENTS:
        if old in text:
            text = text.replace(old, new)
    return f" {text} "


def _as_text(text: Any, index: int) -> str:
    if isinstance(text, str):
        return text
    if text is None or (isinstance(text, float) and math.isnan(text)) or type(text).__name__ == "NAType":
        return ""
    raise InputError(f"text {index} is a {type(text).__name__} ({text!r}), not a string")


def _texts(texts: Sequence[Any]) -> list[str]:
    texts = list(texts)
    if all(type(text) is str for text in texts):
        return texts
    return [_as_text(text, i) for i, text in enumerate(texts)]


@dataclass(eq=False)
class Matches:
    """CSR matches: text ``i`` matched ``entry_ids[indptr[i]:indptr[i + 1]]`` (sorted, unique)."""

    indptr: np.ndarray  # int64, n_texts + 1
    entry_ids: np.ndarray  # int32

    def __post_init__(self) -> None:
        self.indptr = np.asarray(self.indptr, dtype=np.int64)
        self.entry_ids = np.asarray(self.entry_ids, dtype=np.int32)
        if self.indptr.ndim != 1 or len(self.indptr) == 0 or self.indptr[0] != 0:
            raise InputError("Matches: indptr must be a 1-d array starting at 0")
        if self.entry_ids.ndim != 1 or self.indptr[-1] != len(self.entry_ids):
            raise InputError(f"Matches: indptr ends at {self.indptr[-1]} but there are "
                             f"{len(self.entry_ids)} entry_ids")
        if np.any(np.diff(self.indptr) < 0):
            raise InputError("Matches: indptr must not decrease")

    @property
    def n_texts(self) -> int:
        return len(self.indptr) - 1

    def counts_per_text(self) -> np.ndarray:
        return np.diff(self.indptr)

    def text_ids(self) -> np.ndarray:
        """The text index of every element of ``entry_ids``."""
        return np.repeat(np.arange(self.n_texts, dtype=np.int64), self.counts_per_text())

    def as_sets(self) -> list[set[int]]:
        ids = self.entry_ids.tolist()
        bounds = self.indptr.tolist()
        return [set(ids[bounds[i]:bounds[i + 1]]) for i in range(self.n_texts)]

    @staticmethod
    def empty(n_texts: int = 0) -> "Matches":
        return Matches(np.zeros(n_texts + 1, dtype=np.int64), np.zeros(0, dtype=np.int32))

    @staticmethod
    def concatenate(parts: Iterable["Matches"]) -> "Matches":
        parts = list(parts)
        if not parts:
            return Matches.empty()
        offsets = np.cumsum([0] + [len(part.entry_ids) for part in parts[:-1]])
        indptr = np.concatenate([[0]] + [part.indptr[1:] + offset for part, offset in zip(parts, offsets)])
        return Matches(indptr, np.concatenate([part.entry_ids for part in parts]))

    def take(self, indices: np.ndarray | Sequence[int]) -> "Matches":
        """The matches of texts ``indices`` (in that order; a boolean mask also works)."""
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if len(indices) != self.n_texts:
                raise InputError(f"Matches.take: mask of length {len(indices)} for {self.n_texts} texts")
            indices = np.flatnonzero(indices)
        indices = indices.astype(np.int64, copy=False)
        if len(indices) and (indices.min() < -self.n_texts or indices.max() >= self.n_texts):
            raise InputError(f"Matches.take: index out of range for {self.n_texts} texts")
        indices = indices % max(self.n_texts, 1)
        starts = self.indptr[indices]
        counts = self.indptr[indices + 1] - starts
        indptr = np.zeros(len(indices) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        # Position j of the output row k reads entry_ids[starts[k] + j].
        gather = np.repeat(starts - indptr[:-1], counts) + np.arange(indptr[-1], dtype=np.int64)
        return Matches(indptr, self.entry_ids[gather])

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"indptr": self.indptr, "entry_ids": self.entry_ids}

    @staticmethod
    def from_arrays(arrays: Mapping[str, np.ndarray]) -> "Matches":
        """From :meth:`to_arrays`'s dict, or the ``np.load`` of an npz saved from it."""
        missing = {"indptr", "entry_ids"} - set(arrays.keys())
        if missing:
            raise InputError(f"Matches.from_arrays: missing arrays {sorted(missing)}")
        return Matches(np.asarray(arrays["indptr"]), np.asarray(arrays["entry_ids"]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Matches):
            return NotImplemented
        return np.array_equal(self.indptr, other.indptr) and np.array_equal(self.entry_ids, other.entry_ids)


def _from_sets(sets: Sequence[Iterable[int]]) -> Matches:
    rows = [sorted(set(row)) for row in sets]
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=indptr[1:])
    ids = np.fromiter((e for row in rows for e in row), dtype=np.int32, count=int(indptr[-1]))
    return Matches(indptr, ids)


def match_naive(texts: Sequence[Any], entries: Sequence[str]) -> Matches:
    """The reference: entry ``e`` for text ``t`` iff ``f" {entries[e]} " in normalise(t)``."""
    patterns = [f" {entry} " for entry in entries]
    rows = []
    for text in _texts(texts):
        normalised = normalise(text)
        rows.append([e for e, pattern in enumerate(patterns) if pattern in normalised])
    return _from_sets(rows)


class EntryMatcher:
    """Aho-Corasick matcher over ``" entry "`` patterns; equal to :func:`match_naive`.

    Entries must be valid metadata (non-empty, unique, no ``"\\x00"``): see
    :func:`tasks.metaclip.metadata.validate_entries`. Pickling keeps only the entries and
    rebuilds the automaton (for 150k WordNet lemmas: a 2 MB pickle and a rebuild of under a second,
    against a 32 MB pickle of the automaton that takes 0.4 s to dump and load).
    """

    def __init__(self, entries: Sequence[str], batch_texts: int = BATCH_TEXTS):
        from tasks.metaclip.metadata import validate_entries

        self.entries = validate_entries(entries, "EntryMatcher entries")
        if batch_texts < 1:
            raise InputError(f"batch_texts must be at least 1, got {batch_texts}")
        self.batch_texts = batch_texts
        self.automaton = self._build(self.entries)

    @staticmethod
    def _build(entries: Sequence[str]) -> ahocorasick.Automaton:
        automaton = ahocorasick.Automaton(ahocorasick.STORE_INTS)
        # pyahocorasick finds a node's child by a linear scan in creation order, so inserting the
        # entries sorted with their commonest characters first puts common children first
        # (about 10% faster matching of WordNet lemmas on captions; ids are unchanged).
        frequency = Counter(chain.from_iterable(entries))
        rank = {ord(ch): chr(0x100 + position) for position, (ch, _) in enumerate(frequency.most_common())}
        keys = [entry.translate(rank) for entry in entries]
        for entry_id in sorted(range(len(entries)), key=keys.__getitem__):
            automaton.add_word(f" {entries[entry_id]} ", entry_id)
        if entries:
            automaton.make_automaton()
        return automaton

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return {"entries": self.entries, "batch_texts": self.batch_texts}

    def __setstate__(self, state: dict) -> None:
        self.entries = state["entries"]
        self.batch_texts = state["batch_texts"]
        self.automaton = self._build(self.entries)

    def match(self, texts: Sequence[Any]) -> Matches:
        texts = _texts(texts)
        if not self.entries:
            return Matches.empty(len(texts))
        return Matches.concatenate(self._match_batch(texts[start:start + self.batch_texts])
                                   for start in range(0, max(len(texts), 1), self.batch_texts))

    def _match_batch(self, texts: list[str]) -> Matches:
        n = len(texts)
        if n == 0:
            return Matches.empty()
        # Every normalised text begins and ends with a space and no pattern contains the
        # separator, so no match can straddle two texts, while overlapping matches that share a
        # space (" a b " holds " a " and " b ") are all reported by iter().
        big = normalise(f" {SEPARATOR} ".join(texts))  # = SEPARATOR.join(normalise(text) for text in texts)
        if big.count(SEPARATOR) == n - 1:
            codes = np.frombuffer(big.encode("utf-32-le", "surrogatepass"), dtype="<u4")
            separators = np.flatnonzero(codes == 0)
        else:  # some text holds a "\x00" itself: place the separators by the lengths instead
            normalised = [normalise(text) for text in texts]
            big = SEPARATOR.join(normalised)
            separators = np.cumsum(np.fromiter(map(len, normalised), dtype=np.int64, count=n) + 1)[:-1] - 1
        found = np.fromiter(chain.from_iterable(self.automaton.iter(big)), dtype=np.int64)
        if len(found) == 0:
            return Matches.empty(n)
        ends, entry_ids = found[0::2], found[1::2]
        text_ids = np.searchsorted(separators, ends)  # separators before the match's last character
        keys = np.sort(text_ids * len(self.entries) + entry_ids)
        # sort-and-compare: np.unique took 60 times as long on 200k int64 keys (numpy 2.4)
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        text_ids, entry_ids = np.divmod(keys, len(self.entries))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(text_ids, minlength=n), out=indptr[1:])
        return Matches(indptr, entry_ids.astype(np.int32))
