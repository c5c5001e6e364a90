"""CLIP score filter: keep samples whose image-text cosine is above a threshold, or in the top fraction.

In:  ``clip_score`` per sample (NaN where the sample could not be embedded) and either a
     threshold or a top fraction of the pool. Out: ``keep_clip_score``/``reason_clip_score``
     (``low_clip_score``, or ``not_embedded`` for NaN scores, which never pass).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def clip_score_cutoff(scores: np.ndarray, threshold: float | None, top_fraction: float | None) -> float | None:
    """The score a sample needs: the threshold, or the (1 - fraction) quantile of the finite scores."""
    if threshold is not None:
        return float(threshold)
    if top_fraction is None:
        return None
    finite = scores[np.isfinite(scores)]
    return float(np.quantile(finite, 1 - top_fraction)) if len(finite) else None


def clip_score_decisions(scores: pd.Series, cutoff: float) -> pd.DataFrame:
    values = scores.to_numpy(dtype=np.float64)
    missing = ~np.isfinite(values)
    low = ~missing & (values < cutoff)
    reason = np.where(missing, "not_embedded", np.where(low, "low_clip_score", ""))
    return pd.DataFrame({"keep_clip_score": ~(missing | low), "reason_clip_score": reason}, index=scores.index)
