"""MetaCLIP matching: normalisation, the Aho-Corasick matcher against the naive reference, Matches."""

import pickle

import numpy as np
import pytest

from tasks.common.errors import InputError
from tasks.metaclip.matching import EntryMatcher, Matches, match_naive, normalise


@pytest.mark.parametrize("text, expected", [
    ("", "  "),
    ("dog", " dog "),
    ("dog.", " dog .  "),
    ("dog,cat", " dog , cat "),
    ("U.S.", " U . S .  "),
    ("a;b:c?d!e`f", " a ; b : c ? d ! e ` f "),
    ("tab\tnew\nline\rcr", " tab new line cr "),
    ("Keep  CASE and  double spaces", " Keep  CASE and  double spaces "),
    ("don't - (x) \"y\" $5", " don't - (x) \"y\" $5 "),
    ("café, naïve", " café ,  naïve "),
])
def test_normalise_exact(text, expected):
    assert normalise(text) == expected


ENTRIES = ["new", "york", "new york", "york city", "dog", "Dog", "cat", "U.S.", "U", "S", "dog.",
           "hot dog", "`", ".", "café", "naïve", "New York", "a,b", "line", "tab", "x y", "🐶🐶", "🐱 cat"]
TEXTS = [
    "dog.", "dog,cat", "U.S. army", "the `dog` ran", "Dog and dog", "a new york city tour",
    "New York City", "new yorker", "newyork", "tab\tdog\nline", "dog dog dog", None, float("nan"), "",
    "café naïve", "naïve café!", "hot dog.", "hot  dog", "a,b", "x y", "x\ty", " . ", "york city,york",
    "\x00new york", "the new new york", "ничего dog 東京 cat", "🐶🐶 dog, 🐱 cat \ud800 new york",
]


def test_matcher_equals_naive_on_tricky_texts():
    ours = EntryMatcher(ENTRIES).match(TEXTS)
    reference = match_naive(TEXTS, ENTRIES)
    assert ours == reference
    ids = {entry: i for i, entry in enumerate(ENTRIES)}
    sets = ours.as_sets()
    by_text = {i: {ENTRIES[e] for e in s} for i, s in enumerate(sets)}
    assert by_text[0] == {"dog", "."}  # "dog." can never match: normalisation splits the full stop off
    assert by_text[1] == {"dog", "cat"}
    assert by_text[2] == {"U", "S", "."}  # "U.S." neither
    assert by_text[3] == {"`", "dog"}
    assert by_text[4] == {"Dog", "dog"}  # case-sensitive
    assert by_text[5] == {"new", "york", "new york", "york city"}  # overlapping entries all match
    assert by_text[6] == {"New York"}
    assert by_text[7] == {"new"} and by_text[8] == set()
    assert by_text[9] == {"tab", "dog", "line"}
    assert ours.counts_per_text()[10] == 1  # repeated occurrences count once
    assert sets[11] == sets[12] == sets[13] == set()
    assert by_text[14] == by_text[15] == {"café", "naïve"}
    assert by_text[16] == {"hot dog", "dog", "."} and by_text[17] == {"dog"}
    assert by_text[18] == set()  # "a,b" becomes "a , b"
    assert by_text[19] == {"x y"} and by_text[20] == {"x y"}  # the tab became a space
    assert by_text[21] == {"."} and by_text[22] == {"york", "york city"}
    assert by_text[23] == {"york"}
    assert by_text[25] == {"dog", "cat"}
    # astral characters and a lone surrogate
    assert by_text[26] == {"🐶🐶", "dog", "🐱 cat", "cat", "new", "york", "new york"}
    assert sets[24] == {ids["new"], ids["york"], ids["new york"]}


def test_matcher_batches_and_edge_cases():
    reference = match_naive(TEXTS, ENTRIES)
    assert EntryMatcher(ENTRIES, batch_texts=1).match(TEXTS) == reference
    assert EntryMatcher(ENTRIES, batch_texts=7).match(TEXTS) == reference
    assert EntryMatcher(ENTRIES).match([]).n_texts == 0
    assert EntryMatcher([]).match(["dog"]) == Matches.empty(1)
    with pytest.raises(InputError, match="text 1"):
        EntryMatcher(ENTRIES).match(["dog", 3])
    for bad in (["dog", ""], ["dog", "dog"], ["a\x00b"]):
        with pytest.raises(InputError):
            EntryMatcher(bad)


def test_matcher_pickles():
    matcher = EntryMatcher(ENTRIES)
    copy = pickle.loads(pickle.dumps(matcher))
    assert copy.entries == matcher.entries
    assert copy.match(TEXTS) == matcher.match(TEXTS)


def random_corpus(seed: int, n_texts: int = 500, n_entries: int = 300):
    rng = np.random.default_rng(seed)
    vocabulary = ["a", "b", "c", "ab", "B", "dog", "cat", "new", "york", "é", "東京", ".", ",", ";", ":", "?",
                  "!", "`", "'", "-", "(", ")", " ", "  ", "\t", "\n", "\r\n"]
    words = vocabulary[:12]

    def text():
        parts = rng.choice(vocabulary, size=rng.integers(0, 16))
        glue = rng.choice(["", " "], size=len(parts), p=[0.3, 0.7])
        return "".join(g + p for g, p in zip(glue, parts))

    texts = [text() for _ in range(n_texts)]
    entries = set()
    while len(entries) < n_entries:
        n = rng.integers(1, 4)
        entry = " ".join(rng.choice(words + ["'", "-", ".", ",", "`"], size=n))
        if rng.random() < 0.2:
            entry = entry.replace(" ", "", 1)
        entries.add(entry)
    return texts, sorted(entries)


@pytest.mark.parametrize("seed", range(5))
def test_matcher_equals_naive_random(seed):
    texts, entries = random_corpus(seed)
    order = np.random.default_rng(seed).permutation(len(entries))
    entries = [entries[i] for i in order]
    ours = EntryMatcher(entries, batch_texts=97).match(texts)
    assert ours == match_naive(texts, entries)
    assert len(ours.entry_ids) > 100  # the corpus does match


def test_matches_take_concatenate_npz(tmp_path):
    matches = EntryMatcher(ENTRIES).match(TEXTS)
    sets = matches.as_sets()
    picked = [5, 0, 11, 5, -1]
    assert matches.take(picked).as_sets() == [sets[i] for i in picked]
    mask = np.arange(matches.n_texts) % 3 == 0
    assert matches.take(mask).as_sets() == [s for s, m in zip(sets, mask) if m]
    assert matches.take([]).n_texts == 0
    with pytest.raises(InputError):
        matches.take([matches.n_texts])
    parts = [matches.take(range(0, 10)), matches.take(range(10, 10)), matches.take(range(10, matches.n_texts))]
    assert Matches.concatenate(parts) == matches
    assert Matches.concatenate([]).n_texts == 0
    np.savez(tmp_path / "m.npz", **matches.to_arrays())
    with np.load(tmp_path / "m.npz") as arrays:
        loaded = Matches.from_arrays(arrays)
    assert loaded == matches
    assert loaded.indptr.dtype == np.int64 and loaded.entry_ids.dtype == np.int32
    assert np.array_equal(matches.counts_per_text(), [len(s) for s in sets])
    with pytest.raises(InputError):
        Matches.from_arrays({"indptr": np.array([0, 2])})
    with pytest.raises(InputError):
        Matches(np.array([0, 3]), np.array([1, 2], dtype=np.int32))
