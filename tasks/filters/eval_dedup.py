"""Evaluation-set dedup: drop pool samples whose image embedding is too close to an evaluation image.

DataComp's rule (a cosine threshold on image embeddings against every evaluation image), with
this pipeline's embedder. In: L2-normalised pool and evaluation image embeddings. Out:
``keep_eval_dedup``/``reason_eval_dedup`` (``near_eval_image``) and ``eval_max_similarity``.
The nearest evaluation image of each sample comes from a faiss inner-product index.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def nearest_similarity(pool: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each pool row, the largest inner product with any reference row (faiss, exact)."""
    import faiss

    if len(reference) == 0 or len(pool) == 0:
        return np.full(len(pool), -np.inf, dtype=np.float32)
    index = faiss.IndexFlatIP(reference.shape[1])
    index.add(np.ascontiguousarray(reference, dtype=np.float32))
    similarity, _ = index.search(np.ascontiguousarray(pool, dtype=np.float32), 1)
    return similarity[:, 0]


def eval_dedup_decisions(pool_embeddings: np.ndarray, eval_embeddings: np.ndarray, index: pd.Index,
                         threshold: float, valid: np.ndarray) -> pd.DataFrame:
    similarity = nearest_similarity(pool_embeddings, eval_embeddings)
    near = (similarity >= threshold) & np.asarray(valid, dtype=bool)
    return pd.DataFrame({"keep_eval_dedup": ~near, "reason_eval_dedup": np.where(near, "near_eval_image", ""),
                         "eval_max_similarity": similarity.astype(np.float32)}, index=index)
