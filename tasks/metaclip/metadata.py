"""MetaCLIP metadata: the frozen list of entries that texts are matched against.

In:  a released metadata file (a ``.json`` list of strings, MetaCLIP's ``metadata.json``, or a
     text file with one entry per line), or WordNet 3.0's database files (Debian ``wordnet-base``)
     plus, optionally, a corpus of texts to pool frequent unigrams and bigrams from.
Out: :class:`Metadata`, the entries in a fixed order; an entry's id is its position.
"""

from __future__ import annotations

import hashlib
import json
import math
import functools
import os
import re
import string
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable

import fsspec

from tasks.common.errors import InputError
from tasks.metaclip.matching import SEPARATOR, normalise

DEFAULT_WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


@dataclass(frozen=True)
class Metadata:
    entries: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", validate_entries(self.entries, self.source))

    @cached_property
    def content_hash(self) -> str:
        """sha256 of the JSON list of entries: equal hashes, equal ids."""
        return hashlib.sha256(json.dumps(list(self.entries), ensure_ascii=False).encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.entries)


def validate_entries(entries: Iterable[Any], source: str) -> tuple[str, ...]:
    """The entries as a tuple; InputError for a non-string, empty, duplicated or NUL-holding one.

    Positions are 0-based entry ids; the line of a one-entry-per-line file is the id + 1.
    """
    entries = tuple(entries)
    first_seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, str):
            raise InputError(f"{source}: entry {i} (line {i + 1}) is a {type(entry).__name__}, not a string: {entry!r}")
        if not entry.strip():
            raise InputError(f"{source}: entry {i} (line {i + 1}) is empty{' (only whitespace)' if entry else ''}")
        if SEPARATOR in entry:
            raise InputError(f"{source}: entry {i} (line {i + 1}) {entry!r} contains '\\x00', which is reserved")
        previous = first_seen.setdefault(entry, i)
        if previous != i:
            raise InputError(f"{source}: duplicate entry {entry!r} at positions {previous} and {i} "
                             f"(lines {previous + 1} and {i + 1})")
    return entries


def load_metadata(path: str, storage_options: dict | None = None) -> Metadata:
    """A ``.json`` list of strings, or any other file as UTF-8 text with one entry per line."""
    try:
        with fsspec.open(path, "rt", encoding="utf-8", newline="", **(storage_options or {})) as handle:
            text = handle.read()
    except FileNotFoundError as error:
        raise InputError(f"metadata file {path} does not exist") from error
    except UnicodeDecodeError as error:
        raise InputError(f"metadata file {path} is not UTF-8 text: {error}") from error
    except (PermissionError, IsADirectoryError) as error:  # other OS errors (network, storage) are retried
        raise InputError(f"metadata file {path} cannot be read: {error}") from error
    if path.lower().endswith(".json"):
        try:
            entries = json.loads(text)
        except json.JSONDecodeError as error:
            raise InputError(f"metadata file {path} is not valid JSON: {error}") from error
        if not isinstance(entries, list):
            raise InputError(f"metadata file {path} must hold a JSON list of strings, not a {type(entries).__name__}")
        for i, entry in enumerate(entries):
            if not isinstance(entry, str):
                raise InputError(f"metadata file {path}: entry {i} is a {type(entry).__name__}, "
                                 f"not a string: {entry!r}")
    else:
        entries = text.split("\n")
        if entries[-1] == "":  # the final line ending
            entries.pop()
        entries = [entry[:-1] if entry.endswith("\r") else entry for entry in entries]
    if not entries:
        raise InputError(f"metadata file {path} holds no entries")
    return Metadata(validate_entries(entries, f"metadata file {path}"), source=path)


def wordnet_entries(wordnet_dir: str | None = None, all_lemmas: bool = False) -> list[str]:
    """WordNet's synset head lemmas ("_" -> " ", adjective markers dropped), first occurrence order.

    Files are read in the order noun, verb, adjective, adverb. WordNet 3.0 has 117,659 synsets
    and 87,379 distinct head lemmas. ``all_lemmas`` takes every lemma of every synset instead
    (148,730 distinct), not only the head one.
    """
    folder = Path(wordnet_dir or os.environ.get("WORDNET_DIR") or DEFAULT_WORDNET_DIR)
    return list(_wordnet_lemmas(folder, all_lemmas))


@functools.lru_cache(maxsize=4)
def _wordnet_lemmas(folder: Path, all_lemmas: bool) -> tuple[str, ...]:
    """WordNet's lemmas, read once per process (every subset that reports metadata asks for them)."""
    missing = [name for name in WORDNET_FILES if not (folder / name).is_file()]
    if missing:
        raise InputError(f"WordNet folder {folder} lacks {', '.join(missing)}; the Debian package "
                         f"wordnet-base provides it (or set WORDNET_DIR)")
    lemmas: dict[str, None] = {}
    for name in WORDNET_FILES:
        with open(folder / name, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.startswith("  "):  # license header
                    continue
                fields = line.split(" ")
                try:
                    words = fields[4:4 + 2 * int(fields[3], 16):2] if all_lemmas else fields[4:5]
                except (IndexError, ValueError) as error:
                    raise InputError(f"WordNet file {folder / name}, line {number}: not a synset line") from error
                for word in words:
                    lemmas.setdefault(_ADJECTIVE_MARKER.sub("", word).replace("_", " "), None)
    return tuple(lemmas)


def _is_punctuation(token: str) -> bool:
    return all(ch in string.punctuation or unicodedata.category(ch).startswith("P") for ch in token)


def pool_ngrams(texts: Iterable[str], min_unigram_count: int = 100, min_bigram_count: int = 30,
                min_bigram_pmi: float = 30.0) -> list[str]:
    """Frequent unigrams and strongly associated bigrams of a corpus, most frequent first.

    Tokens are the whitespace-separated words of :func:`~tasks.metaclip.matching.normalise`\\ d
    texts, so every n-gram returned can match a text. Tokens made only of punctuation (Unicode
    ``P*`` or ASCII punctuation) are dropped and break adjacency: "dog . cat" has no bigram.
    Counts are occurrences, not texts.

    A unigram is kept when its count >= ``min_unigram_count``. A bigram ``a b`` is kept when its
    count >= ``min_bigram_count`` and its PMI score >= ``min_bigram_pmi``, where the score is the
    ratio ``p(ab) / (p(a) p(b))`` with ``p(ab) = count(ab) / #bigrams`` and ``p(x) = count(x) /
    #tokens``: how many times more often the pair occurs than if its words were independent. This
    is exp of the textbook (natural-log) PMI; MetaCLIP's "PMI >= 30" cannot be a log-scale
    threshold (e**30 times chance needs ~1e13 tokens), so the ratio is used. The result is ordered
    by count descending, then alphabetically, unigrams and bigrams together.
    """
    check_ngram_options(min_unigram_count, min_bigram_count, min_bigram_pmi)
    unigrams, bigrams = count_ngrams(texts)
    return select_ngrams(unigrams, bigrams, sum(unigrams.values()), sum(bigrams.values()), min_unigram_count,
                         min_bigram_count, min_bigram_pmi)


def check_ngram_options(min_unigram_count: int, min_bigram_count: int, min_bigram_pmi: float) -> None:
    for name, value in (("min_unigram_count", min_unigram_count), ("min_bigram_count", min_bigram_count)):
        if value < 1:
            raise InputError(f"{name} must be at least 1, got {value}")
    if not math.isfinite(min_bigram_pmi):
        raise InputError(f"min_bigram_pmi must be finite, got {min_bigram_pmi}")


def count_ngrams(texts: Iterable[str]) -> tuple[Counter, Counter]:
    """Unigram and bigram occurrences of the texts, tokenised as :func:`pool_ngrams` says."""
    unigrams: Counter[str] = Counter()
    bigrams: Counter[tuple[str, str]] = Counter()
    dropped: dict[str, bool] = {}
    for text in texts:
        if not isinstance(text, str):
            continue  # None / NaN captions
        previous = None
        for token in normalise(text).split():
            drop = dropped.get(token)
            if drop is None:
                drop = dropped[token] = _is_punctuation(token) or SEPARATOR in token
            if drop:
                previous = None
                continue
            unigrams[token] += 1
            if previous is not None:
                bigrams[previous, token] += 1
            previous = token
    return unigrams, bigrams


def select_ngrams(unigrams: dict, bigrams: dict, n_tokens: int, n_bigrams: int, min_unigram_count: int,
                  min_bigram_count: int, min_bigram_pmi: float) -> list[str]:
    """:func:`pool_ngrams`' rule on counts (those of a whole corpus, however they were summed)."""
    kept = [(count, word) for word, count in unigrams.items() if count >= min_unigram_count]
    for (a, b), count in bigrams.items():
        if count >= min_bigram_count:
            score = (count / n_bigrams) / ((unigrams[a] / n_tokens) * (unigrams[b] / n_tokens))
            if score >= min_bigram_pmi:
                kept.append((count, f"{a} {b}"))
    kept.sort(key=lambda item: (-item[0], item[1]))
    return [word for _, word in kept]


def build_metadata(texts: Iterable[str] | None = None, wordnet_dir: str | None = None,
                   **ngram_options: Any) -> Metadata:
    """WordNet's head lemmas, then the corpus's pooled n-grams (:func:`pool_ngrams`) not already in."""
    entries = dict.fromkeys(wordnet_entries(wordnet_dir))
    folder = wordnet_dir or os.environ.get("WORDNET_DIR") or DEFAULT_WORDNET_DIR
    source = f"WordNet head lemmas ({folder})"
    if texts is not None:
        pooled = pool_ngrams(texts, **ngram_options)
        added = [ngram for ngram in pooled if ngram not in entries]
        entries.update(dict.fromkeys(added))
        options = ", ".join(f"{key}={value}" for key, value in sorted(ngram_options.items()))
        source += f" + {len(added)} pooled n-grams" + (f" ({options})" if options else "")
    return Metadata(tuple(entries), source=source)
