"""Duplicate images: exact (same bytes) and perceptual (pHash within a Hamming distance).

In:  ``uid`` with ``sha256`` (of the downloaded bytes) or ``phash`` (64-bit, as int64) per sample.
Out: ``keep_<name>``/``reason_<name>`` and ``duplicate_of_<name>``: in every group of duplicates
     the sample with the smallest uid is kept (deterministic, whatever the order of the shards)
     and the others point to it.

Perceptual groups are the connected components of "within ``max_distance`` bits" (and, when
thumbnails are given, "of similar colours"), found by
comparing all pairs in blocks of ``block`` rows (XOR and popcount, vectorised): memory stays at
``block`` x n, time grows with n squared, which is seconds for 10^5 samples; at the scale of
hundreds of millions, semantic dedup within clusters is the tool.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _decisions(name: str, uid: pd.Series, labels: np.ndarray, reason: str) -> pd.DataFrame:
    """Keep the smallest uid of every label group; the rest point to it."""
    frame = pd.DataFrame({"uid": uid.to_numpy(), "label": labels}, index=uid.index)
    keeper = frame.groupby("label")["uid"].transform("min")
    duplicate = (frame["uid"] != keeper).to_numpy()
    return pd.DataFrame({f"keep_{name}": ~duplicate, f"reason_{name}": np.where(duplicate, reason, ""),
                         f"duplicate_of_{name}": np.where(duplicate, keeper, "")}, index=uid.index)


def exact_duplicates(uid: pd.Series, sha256: pd.Series) -> pd.DataFrame:
    """Same sha256 = same bytes. Samples without a hash are their own group."""
    labels = sha256.fillna(uid).astype(str).to_numpy()
    return _decisions("exact_dedup", uid, labels, "exact_duplicate")


def hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes within ``max_distance`` differing bits."""
    values = hashes.astype(np.int64).view(np.uint64)
    left, right = [], []
    for start in range(0, len(values), block):
        rows = values[start:start + block]
        distance = np.bitwise_count(rows[:, None] ^ values[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        upper = i < j
        left.append(i[upper])
        right.append(j[upper])
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(left), np.concatenate(right)


def perceptual_duplicates(uid: pd.Series, phash: pd.Series, max_distance: int, valid: np.ndarray | None = None,
                          thumbs: np.ndarray | None = None, max_color_distance: float | None = None) -> pd.DataFrame:
    """Samples whose pHash are within ``max_distance`` bits, transitively, form a group.

    pHash sees grey levels only: a red and a green disc at the same place hash alike. With
    ``thumbs`` (one row of 8 x 8 RGB values per sample) a pair also needs a mean absolute
    difference of at most ``max_color_distance`` between its thumbnails.
    """
    n = len(uid)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    positions = np.flatnonzero(valid)
    i, j = hamming_pairs(phash.to_numpy()[positions], max_distance)
    if thumbs is not None and max_color_distance is not None and len(i):
        colour = np.abs(thumbs[positions[i]].astype(np.int16) - thumbs[positions[j]].astype(np.int16)).mean(axis=1)
        close = colour <= max_color_distance
        i, j = i[close], j[close]
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (positions[i], positions[j])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return _decisions("phash_dedup", uid, labels, "near_duplicate")
