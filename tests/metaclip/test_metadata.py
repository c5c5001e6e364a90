"""MetaCLIP metadata: loading released lists, validation, WordNet lemmas, n-gram pooling."""

import json
import os

import pytest

from tasks.common.errors import InputError
from tasks.metaclip.metadata import (Metadata, build_metadata, load_metadata, pool_ngrams, validate_entries,
                                     wordnet_entries)

WORDNET = "/usr/share/wordnet"
needs_wordnet = pytest.mark.skipif(not os.path.isfile(f"{WORDNET}/data.noun"),
                                   reason="WordNet (Debian wordnet-base) is not installed")


def test_load_json_and_text(tmp_path):
    entries = ["dog", "hot dog", "New York", "café", " spaced "]
    (tmp_path / "metadata.json").write_text(json.dumps(entries), encoding="utf-8")
    (tmp_path / "metadata.txt").write_bytes("dog\r\nhot dog\nNew York\ncafé\n spaced \n".encode("utf-8"))
    (tmp_path / "no_final_newline.txt").write_text("dog\nhot dog\nNew York\ncafé\n spaced ", encoding="utf-8")
    loaded = [load_metadata(str(tmp_path / name)) for name in ("metadata.json", "metadata.txt", "no_final_newline.txt")]
    for metadata in loaded:
        assert metadata.entries == tuple(entries)
        assert len(metadata) == 5
    assert len({metadata.content_hash for metadata in loaded}) == 1
    assert loaded[0].source == str(tmp_path / "metadata.json")
    assert Metadata(("dog", "cat"), "x").content_hash != Metadata(("cat", "dog"), "x").content_hash


@pytest.mark.parametrize("content, message", [
    ("dog\n\ncat\n", r"entry 1 \(line 2\) is empty"),
    ("dog\n   \ncat\n", r"entry 1 \(line 2\) is empty"),
    ("dog\ncat\ndog\n", r"duplicate entry 'dog' at positions 0 and 2"),
    ("dog\nc\x00t\n", r"entry 1 \(line 2\) 'c\\x00t' contains"),
    ("\n", r"entry 0 \(line 1\) is empty"),
])
def test_bad_text_metadata(tmp_path, content, message):
    path = tmp_path / "metadata.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as error:
        load_metadata(str(path))
    assert str(path) in str(error.value)


@pytest.mark.parametrize("content, message", [
    ({"dog": 1}, "JSON list of strings"),
    (["dog", 3], "entry 1 is a int"),
    (["dog", "cat", "dog"], "duplicate entry 'dog'"),
    (["dog", ""], "entry 1"),
])
def test_bad_json_metadata(tmp_path, content, message):
    path = tmp_path / "metadata.json"
    path.write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(InputError, match=message):
        load_metadata(str(path))


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(InputError, match="nothing.json"):
        load_metadata(str(tmp_path / "nothing.json"))
    (tmp_path / "broken.json").write_text("[\"dog\",", encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        load_metadata(str(tmp_path / "broken.json"))
    for name, content in (("empty.txt", ""), ("empty.json", "[]")):
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(InputError, match=f"{name} holds no entries"):
            load_metadata(str(tmp_path / name))


def test_validate_entries_and_frozen_metadata():
    assert validate_entries(["a", "b"], "s") == ("a", "b")
    with pytest.raises(InputError, match="my list: duplicate entry 'b'"):
        validate_entries(["a", "b", "b"], "my list")
    with pytest.raises(InputError, match="duplicate"):
        Metadata(("a", "a"), "inline")
    metadata = Metadata(("a", "b"), "inline")
    with pytest.raises(AttributeError):
        metadata.entries = ("c",)


@needs_wordnet
def test_wordnet_entries():
    entries = wordnet_entries(WORDNET)
    assert len(entries) > 80_000  # 87,379 distinct head lemmas in WordNet 3.0
    assert len(entries) == len(set(entries))
    assert all("_" not in entry and not entry.endswith(")") for entry in entries)
    for lemma in ("dog", "cat", "New York", "ice cream", "able"):
        assert lemma in entries
    assert entries[0] == "entity"  # the first noun synset
    every = wordnet_entries(WORDNET, all_lemmas=True)
    assert len(every) > 140_000 and "hot dog" in every and "frankfurter" in every
    Metadata(tuple(every), "wordnet")  # valid metadata


def test_wordnet_missing(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="wordnet-base") as error:
        wordnet_entries(str(tmp_path))
    assert str(tmp_path) in str(error.value)
    monkeypatch.setenv("WORDNET_DIR", str(tmp_path))
    with pytest.raises(InputError, match=str(tmp_path)):
        wordnet_entries()


def test_pool_ngrams_hand_made():
    texts = (["New York is big.", "I love New York!", "new york, new york"] * 10
             + ["the cat sat", "the dog sat", "the cat ran"] * 10 + ["... !!", None])
    # 210 tokens, 140 bigrams. Lift of "New York": (20/140) / (20/210)**2 = 15.75; of "the cat":
    # (20/140) / (30/210 * 20/210) = 10.5. "york new" (20 times) only occurs across a comma.
    ngrams = pool_ngrams(texts, min_unigram_count=20, min_bigram_count=20, min_bigram_pmi=12.0)
    assert ngrams == ["the", "New", "New York", "York", "cat", "new", "new york", "sat", "york"]
    assert "the cat" in pool_ngrams(texts, min_unigram_count=20, min_bigram_count=20, min_bigram_pmi=10.0)
    assert pool_ngrams(texts, min_unigram_count=1000, min_bigram_count=1000) == []
    with pytest.raises(InputError, match="min_unigram_count"):
        pool_ngrams(texts, min_unigram_count=0)


@needs_wordnet
def test_build_metadata():
    texts = ["a photo of a dog", "a photo of a hot dog", "zzyzx qwerty"] * 5
    metadata = build_metadata(texts, WORDNET, min_unigram_count=5, min_bigram_count=5, min_bigram_pmi=1.0)
    wordnet = wordnet_entries(WORDNET)
    assert metadata.entries[:len(wordnet)] == tuple(wordnet)
    added = metadata.entries[len(wordnet):]
    assert {"zzyzx", "qwerty", "zzyzx qwerty", "photo"} <= set(added) and "dog" not in added
    assert "pooled n-grams" in metadata.source
    assert build_metadata(None, WORDNET).entries == tuple(wordnet)
