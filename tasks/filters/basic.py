"""DataComp's basic filter: English caption, enough words and characters, image size and shape.

In:  a data frame with ``text``, ``original_width``, ``original_height`` (as downloaded) and a
     :class:`~tasks.filters.config.FilterConfig`.
Out: ``keep_basic`` (bool) and ``reason_basic``: the failed rules joined by ``,`` (``not_english``,
     ``too_few_words``, ``too_short``, ``too_small``, ``aspect_ratio``), empty when kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.filters.config import FilterConfig

_IDENTIFIER = None


def english_probability(texts: pd.Series) -> np.ndarray:
    """langid's probability that each text is English (0 for an empty text); its model ships in the package."""
    global _IDENTIFIER
    if _IDENTIFIER is None:
        from langid.langid import LanguageIdentifier, model

        _IDENTIFIER = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    return np.array([dict(_IDENTIFIER.rank(text)).get("en", 0.0) if text.strip() else 0.0 for text in texts])


def basic_decisions(frame: pd.DataFrame, config: FilterConfig) -> pd.DataFrame:
    text = frame["text"].fillna("").astype(str)
    width = frame["original_width"].fillna(frame.get("width", 0)).to_numpy(dtype=float)
    height = frame["original_height"].fillna(frame.get("height", 0)).to_numpy(dtype=float)
    rules = {
        "too_few_words": text.str.split().str.len().fillna(0).to_numpy() < config.min_words,
        "too_short": text.str.len().to_numpy() < config.min_chars,
        "too_small": np.minimum(width, height) < config.min_image_side,
        "aspect_ratio": np.maximum(width, height) > config.max_aspect_ratio * np.maximum(np.minimum(width, height), 1),
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
