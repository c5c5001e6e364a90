"""Each filter on small exact cases."""


import numpy as np
import pandas as pd
import pytest

from tasks.common.errors import InputError
from tasks.filters.basic import basic_decisions
from tasks.filters.clip_score import clip_score_cutoff, clip_score_decisions
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import all_pairs_perceptual_duplicates, exact_duplicates, exact_keys, hamming_pairs
from tasks.filters.eval_dedup import eval_dedup_decisions
from tasks.filters.nsfw import load_image_head, nsfw_image_decisions, nsfw_text_decisions


def test_basic_rules_and_reasons():
    frame = pd.DataFrame({
        "text": ["a red star on a white background", "ein roter Stern auf weißem Hintergrund, Foto vom Sommer",
                 "red star", "a b c", "a photo of a blue circle", "a photo of a blue circle", ""],
        "original_width": [300, 300, 300, 300, 150, 900, 300],
        "original_height": [300, 300, 300, 300, 300, 200, 300],
    })
    out = basic_decisions(frame, FilterConfig())
    assert out["keep_basic"].tolist() == [True, False, False, False, False, False, False]
    assert out["reason_basic"].tolist() == [
        "", "not_english", "too_few_words", "too_short", "too_small", "aspect_ratio",
        "not_english,too_few_words,too_short"]  # an empty caption has no language
    relaxed = basic_decisions(frame, FilterConfig(english_only=False, min_image_side=100, max_aspect_ratio=5))
    assert relaxed["keep_basic"].tolist() == [True, True, False, False, True, True, False]


def test_nsfw_terms_match_whole_words_only():
    texts = pd.Series(["sexy red star", "shipping from Essex", "a sextant", "NSFW!", "explicit   adult picture",
                       "explicit content", None, "Porn."])
    out = nsfw_text_decisions(texts, FilterConfig())
    assert out["keep_nsfw_text"].tolist() == [False, True, True, False, False, True, True, False]
    assert out["reason_nsfw_text"].tolist() == ["unsafe_term:sexy", "", "", "unsafe_term:nsfw",
                                                "unsafe_term:explicit   adult", "", "", "unsafe_term:porn"]
    custom = nsfw_text_decisions(texts, FilterConfig(nsfw_terms=("sextant",)))
    assert custom["keep_nsfw_text"].tolist() == [True, True, False, True, True, True, True, True]


def test_nsfw_image_head(tmp_path):
    path = tmp_path / "head.npz"
    np.savez(path, weights=np.array([10.0, 0.0]), bias=np.array([-5.0]))
    head = load_image_head(str(path))
    embeddings = np.array([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    config = FilterConfig(nsfw_image_head=str(path))
    out = nsfw_image_decisions(embeddings, pd.RangeIndex(3), config, head, valid=np.array([True, True, False]))
    assert out["keep_nsfw_image"].tolist() == [False, True, True]  # the third has no valid embedding
    assert nsfw_image_decisions(embeddings, pd.RangeIndex(3), FilterConfig(), None, np.ones(3, bool)) is None
    with pytest.raises(InputError, match="weights have 2 dimensions, the image embeddings 3"):
        nsfw_image_decisions(np.zeros((1, 3)), pd.RangeIndex(1), config, head, np.ones(1, bool))
    with pytest.raises(InputError, match="no such file"):
        load_image_head(str(tmp_path / "none.npz"))
    np.savez(tmp_path / "bad.npz", w=np.zeros(2))
    with pytest.raises(InputError, match="'weights' and 'bias'"):
        load_image_head(str(tmp_path / "bad.npz"))


def test_exact_dedup_keeps_the_smallest_uid():
    frame = pd.DataFrame({"id": np.arange(5, dtype=np.int64), "uid": ["b", "a", "c", "d", "e"],
                          "sha256": ["x", "x", "y", "x", None]})
    out = exact_duplicates(*exact_keys(frame, 3))
    assert dict(zip(out["id"], out["duplicate_of"])) == {0: "a", 3: "a"}


def test_perceptual_dedup_groups_transitively():
    base = 0b1111_0000
    hashes = np.array([base, base ^ 0b11, base ^ 0b1111, 2**40 + 7, base ^ (0b11 << 20), -1], dtype=np.int64)
    # distances: 0-1: 2, 1-2: 2 (0-2: 4), 0-4: 2; 3 and 5 far from everything
    i, j = hamming_pairs(hashes, 2, block=2)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (0, 4), (1, 2)]
    uid = np.array(["e", "c", "a", "d", "b", "f"])
    out = all_pairs_perceptual_duplicates(uid, hashes, max_distance=2)
    assert dict(zip(out["id"], out["duplicate_of"])) == {0: "a", 1: "a", 4: "a"}
    invalid = all_pairs_perceptual_duplicates(uid, hashes, 2, valid=np.array([True, False, True, True, True, True]))
    # without 1, nothing links 0 and 2; 0 and 4 still pair, and 4 ("b") has the smaller uid
    assert dict(zip(invalid["id"], invalid["duplicate_of"])) == {0: "b"}


def test_eval_dedup_uses_the_nearest_evaluation_image():
    evaluation = np.eye(3, dtype=np.float32)
    pool = np.array([[1, 0, 0], [0.6, 0.8, 0], [0, 0, 1], [0, 0, 1]], dtype=np.float32)
    out = eval_dedup_decisions(pool, evaluation, pd.RangeIndex(4), 0.95, valid=np.array([True, True, True, False]))
    assert out["keep_eval_dedup"].tolist() == [False, True, False, True]
    assert out["eval_max_similarity"].tolist() == pytest.approx([1.0, 0.8, 1.0, 1.0])


def test_clip_score_threshold_and_top_fraction():
    scores = pd.Series([0.1, 0.5, np.nan, 0.3, 0.9])
    assert clip_score_cutoff(scores.to_numpy(), 0.3, None) == 0.3
    assert clip_score_cutoff(scores.to_numpy(), None, 0.5) == pytest.approx(0.4)
    assert clip_score_cutoff(scores.to_numpy(), None, None) is None
    out = clip_score_decisions(scores, 0.3)
    assert out["keep_clip_score"].tolist() == [False, True, False, True, True]
    assert out["reason_clip_score"].tolist() == ["low_clip_score", "", "not_embedded", "", ""]


@pytest.mark.parametrize("settings,message", [
    ({"max_aspect_ratio": 0.5}, "max_aspect_ratio"), ({"phash_max_distance": 99}, "phash_max_distance"),
    ({"clip_score_top_fraction": 0}, "clip_score_top_fraction"),
    ({"clip_score_threshold": 0.2, "clip_score_top_fraction": 0.3}, "not both"),
    ({"nsfw_terms": ["ok", " "]}, "empty term"), ({"min_side": 3}, r"unknown setting\(s\) \['min_side'\]"),
])
def test_bad_filter_settings(settings, message):
    with pytest.raises(InputError, match=message):
        FilterConfig.from_dict(settings)
