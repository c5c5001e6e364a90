"""DataComp's basic filter: English caption, enough words and characters, image size and shape.

In:  a data frame with ``text``, ``original_width``, ``original_height`` (as downloaded) and a
     :class:`~tasks.filters.config.FilterConfig`.
Out: ``keep_basic`` (bool) and ``reason_basic``: the failed rules joined by ``,`` (``not_english``,
     ``too_few_words``, ``too_short``, ``too_small``, ``aspect_ratio``), empty when kept.

A sample without image sizes (a pool imported from metadata that lacks them, such as
clip-retrieval's without ``enable_metadata``) is not judged by the size rules (``too_small``,
``aspect_ratio``): they cannot be checked, and removing every such sample would empty the pool.
The caption rules still apply; the filter report lists the size rules as skipped for those
samples, with their number (:func:`size_known`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.filters.config import FilterConfig

_IDENTIFIER = None
BATCH = 4096  # captions per sparse product


def _identifier():
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from langid.langid import LanguageIdentifier, model

        _IDENTIFIER = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return _IDENTIFIER


def _feature_counts(identifier, text: str) -> dict[int, int]:
    """langid's byte n-gram features of one text: the states its tokenizer enters, mapped to features."""
    state = 0
    states: dict[int, int] = {}
    for byte in text.encode("utf8"):
        state = identifier.tk_nextmove[(state << 8) + byte]
        states[state] = states.get(state, 0) + 1
    features: dict[int, int] = {}
    for state, count in states.items():
        for index in identifier.tk_output.get(state, ()):
            features[index] = features.get(index, 0) + count
    return features


def english_probability(texts: pd.Series) -> np.ndarray:
    """langid's probability that each text is English (0 for an empty text); its model ships in the package.

    The same model and the same normalised probability as ``LanguageIdentifier.rank``, computed for
    a batch of texts at once: their feature counts as one sparse matrix times the model's
    (features x languages) table, instead of one dense product per text (the cost of langid's own
    ``rank``, about 2 ms a caption).
    """
    from scipy.sparse import csr_matrix

    identifier = _identifier()
    english = identifier.nb_classes.index("en")
    values = [str(t) for t in texts]
    out = np.zeros(len(values), dtype=np.float64)
    for first in range(0, len(values), BATCH):
        batch = values[first:first + BATCH]
        counts = [_feature_counts(identifier, text) for text in batch]
        indptr = np.concatenate([[0], np.cumsum([len(c) for c in counts])])
        indices = np.fromiter((i for c in counts for i in c), dtype=np.int64, count=int(indptr[-1]))
        data = np.fromiter((v for c in counts for v in c.values()), dtype=np.float64, count=int(indptr[-1]))
        features = csr_matrix((data, indices, indptr), shape=(len(batch), identifier.nb_numfeats))
        log_probability = np.asarray(features @ identifier.nb_ptc) + identifier.nb_pc
        with np.errstate(over="ignore"):
            probability = 1.0 / np.exp(log_probability - log_probability[:, [english]]).sum(axis=1)
        empty = np.array([not text.strip() for text in batch])
        out[first:first + len(batch)] = np.where(empty, 0.0, probability)
    return out


def _sizes(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Original width and height (the downloaded ones where the original is missing); NaN when unknown."""
    def column(name: str) -> pd.Series:
        return pd.to_numeric(frame[name], errors="coerce") if name in frame else pd.Series(np.nan, index=frame.index)

    width = column("original_width").fillna(column("width")).to_numpy(dtype=float)
    height = column("original_height").fillna(column("height")).to_numpy(dtype=float)
    return width, height


def size_known(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose image width and height are known (the size rules can judge them)."""
    width, height = _sizes(frame)
    return np.isfinite(width) & np.isfinite(height)


def basic_decisions(frame: pd.DataFrame, config: FilterConfig) -> pd.DataFrame:
    text = frame["text"].fillna("").astype(str)
    width, height = _sizes(frame)
    known = np.isfinite(width) & np.isfinite(height)
    with np.errstate(invalid="ignore"):
        rules = {
            "too_few_words": text.str.split().str.len().fillna(0).to_numpy() < config.min_words,
            "too_short": text.str.len().to_numpy() < config.min_chars,
            "too_small": known & (np.minimum(width, height) < config.min_image_side),
            "aspect_ratio": known & (np.maximum(width, height)
                                     > config.max_aspect_ratio * np.maximum(np.minimum(width, height), 1)),
        }
    if config.english_only:
        rules = {"not_english": english_probability(text) < config.english_min_probability, **rules}
    return decisions_from_rules("basic", rules, frame.index)


def decisions_from_rules(name: str, rules: dict[str, np.ndarray], index: pd.Index) -> pd.DataFrame:
    """``keep_<name>`` (no rule failed) and ``reason_<name>`` (the failed rules, joined by ',')."""
    reason = pd.Series("", index=index, dtype=object)
    failed = np.zeros(len(index), dtype=bool)
    for rule, mask in rules.items():
        mask = np.asarray(mask, dtype=bool)
        reason = reason + np.where(mask, rule + ",", "")
        failed |= mask
    return pd.DataFrame({f"keep_{name}": ~failed, f"reason_{name}": reason.str.rstrip(",").astype(str)}, index=index)
