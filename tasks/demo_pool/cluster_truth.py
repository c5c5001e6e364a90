"""How evenly the clusters of a tree spread over the true concepts (an evaluation step: reads the truth).

In:  the cluster tree (its levels and ``inputs.parquet`` of uids) and the demo pool's truth file.
Out: per tree, for its top level: every cluster's majority concept, the number of clusters per
     concept, and summary figures as in the paper's Fig. 4 (clusters per concept against concept
     size): the log-log slope of clusters per concept against concept size (k-means gives a
     slope near 1 for well-separated concepts, perfectly balanced clustering 0), how many
     concepts own at least one cluster, and the clusters owned by the 10 largest and by the
     smaller half of the concepts. The slope is None where it is undefined (see
     :func:`spread_summary`); tiny and degenerate inputs never raise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.cluster.tree import load_tree, sample_labels
from tasks.common.store import Store


def clusters_per_concept(store: Store, tree: dict, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per concept: its size in the clustered pool and how many top-level clusters it owns
    (``tree``: the clustering stage's manifest)."""
    levels = load_tree(store, store.relative(tree["outputs"]["folder"]))
    with store.open(store.relative(tree["outputs"]["inputs"])) as handle:
        uids = pd.read_parquet(handle)["uid"]
    top = sample_labels(levels)[:, -1]
    frame = pd.DataFrame({"uid": uids, "cluster": top}).merge(truth[["uid", "concept"]], on="uid", how="left")
    frame = frame.dropna(subset=["concept"])
    majority = frame.groupby(["cluster", "concept"]).size().reset_index(name="n").sort_values(
        ["cluster", "n"], ascending=[True, False]).drop_duplicates("cluster")
    sizes = frame.groupby("concept").size().rename("samples")
    owned = majority.groupby("concept").size().rename("clusters")
    return pd.concat([sizes, owned], axis=1).fillna(0).astype(int).sort_values("samples", ascending=False)


def least_squares_slope(x: np.ndarray, y: np.ndarray) -> float | None:
    """The slope of the least-squares line through the points (x, y) where both are finite:
    covariance over variance. None when it is undefined: fewer than 2 points or all x equal."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    if len(x) < 2 or x.min() == x.max():
        return None
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx * dx).sum())


def spread_summary(per_concept: pd.DataFrame) -> dict:
    """``per_concept`` (columns ``samples`` and ``clusters``, largest concept first) -> summary figures.

    Any input gives an answer: the log-log slope is fitted over the concepts with samples and a
    known cluster count, and is None where no line is defined (fewer than 2 such concepts, or all
    of one size); NaN counts count as 0 in the totals.
    """
    sizes = per_concept["samples"].to_numpy(dtype=float)
    clusters = per_concept["clusters"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 or NaN samples: left out of the fit
        slope = least_squares_slope(np.log(np.where(sizes > 0, sizes, np.nan)), np.log1p(clusters))
    owned = np.nan_to_num(clusters)
    smaller_half = sizes <= np.nanmedian(sizes) if np.isfinite(sizes).any() else np.zeros(len(sizes), bool)
    return {"concepts": int(len(per_concept)), "clusters": int(owned.sum()),
            "loglog_slope": None if slope is None else round(slope, 3),
            "concepts_with_a_cluster": int((owned > 0).sum()),
            "clusters_of_10_largest_concepts": int(owned[:10].sum()),
            "clusters_of_smaller_half": int(owned[smaller_half].sum())}
