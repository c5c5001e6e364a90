"""NSFW filters: unsafe terms in captions, and a classifier head on image embeddings.

In:  captions, image embeddings and a :class:`~tasks.filters.config.FilterConfig`.
Out: ``keep_nsfw_text``/``reason_nsfw_text`` (``unsafe_term:<term>``) from a word-boundary,
     case-insensitive match of the configured terms ("Essex" does not match "sex"); and
     ``keep_nsfw_image``/``reason_nsfw_image`` (``unsafe_image``) from a logistic head
     ``sigmoid(embedding . weights + bias) >= threshold`` loaded from an ``.npz`` file. Without a
     head the image check is not run: :func:`nsfw_image_decisions` returns ``None`` and the
     report says it was skipped, instead of passing everything silently.
"""

from __future__ import annotations

import re

import fsspec
import numpy as np
import pandas as pd

from tasks.common.errors import InputError
from tasks.filters.config import FilterConfig


def term_pattern(terms: tuple[str, ...]) -> re.Pattern:
    alternatives = sorted((re.escape(t.strip()).replace(r"\ ", r"\s+") for t in terms), key=len, reverse=True)
    return re.compile(r"(?<![\w])(" + "|".join(alternatives) + r")(?![\w])", re.IGNORECASE)


def nsfw_text_decisions(texts: pd.Series, config: FilterConfig) -> pd.DataFrame:
    found = texts.fillna("").astype(str).str.extract(term_pattern(config.nsfw_terms), expand=False)
    unsafe = found.notna().to_numpy()
    reason = np.where(unsafe, "unsafe_term:" + found.fillna("").str.lower(), "")
    return pd.DataFrame({"keep_nsfw_text": ~unsafe, "reason_nsfw_text": reason}, index=texts.index)


def load_image_head(path: str, storage_options: dict | None = None) -> tuple[np.ndarray, float]:
    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as handle:
            data = np.load(handle)
            return np.asarray(data["weights"], dtype=np.float32).ravel(), float(np.asarray(data["bias"]).ravel()[0])
    except FileNotFoundError as exc:
        raise InputError(f"filters nsfw_image_head {path}: no such file") from exc
    except (KeyError, ValueError) as exc:
        raise InputError(f"filters nsfw_image_head {path}: needs arrays 'weights' and 'bias' ({exc})") from exc


def nsfw_image_decisions(image_embeddings: np.ndarray, index: pd.Index, config: FilterConfig,
                         head: tuple[np.ndarray, float] | None, valid: np.ndarray) -> pd.DataFrame | None:
    """``valid``: samples that have an image embedding (the others are left to the embedding's reason)."""
    if head is None:
        return None
    weights, bias = head
    if weights.shape[0] != image_embeddings.shape[1]:
        raise InputError(f"filters nsfw_image_head {config.nsfw_image_head}: weights have {weights.shape[0]} "
                         f"dimensions, the image embeddings {image_embeddings.shape[1]}")
    score = 1 / (1 + np.exp(-(image_embeddings.astype(np.float32) @ weights + bias)))
    unsafe = (score >= config.nsfw_image_threshold) & np.asarray(valid, dtype=bool)
    return pd.DataFrame({"keep_nsfw_image": ~unsafe, "reason_nsfw_image": np.where(unsafe, "unsafe_image", ""),
                         "nsfw_image_score": score.astype(np.float32)}, index=index)
