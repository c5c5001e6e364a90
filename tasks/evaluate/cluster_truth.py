"""How evenly the clusters of a tree spread over the true concepts (an evaluation step: reads the truth).

In:  the cluster tree (its levels and ``inputs.parquet`` of uids) and the demo pool's truth file.
Out: per tree, for its top level: every cluster's majority concept, the number of clusters per
     concept, and summary figures as in the paper's Fig. 4 (clusters per concept against concept
     size): the log-log slope of clusters per concept against concept size (k-means gives a
     slope near 1 for well-separated concepts, perfectly balanced clustering 0), how many
     concepts own at least one cluster, and the clusters owned by the 10 largest and by the
     smaller half of the concepts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.cluster.tree import load_tree, sample_labels
from tasks.common.store import Store


def clusters_per_concept(store: Store, tree_folder: str, truth: pd.DataFrame) -> pd.DataFrame:
    """One row per concept: its size in the clustered pool and how many top-level clusters it owns."""
    levels = load_tree(store, tree_folder)
    with store.open(f"{tree_folder}/inputs.parquet") as handle:
        uids = pd.read_parquet(handle)["uid"]
    top = sample_labels(levels)[:, -1]
    frame = pd.DataFrame({"uid": uids, "cluster": top}).merge(truth[["uid", "concept"]], on="uid", how="left")
    frame = frame.dropna(subset=["concept"])
    majority = frame.groupby(["cluster", "concept"]).size().reset_index(name="n").sort_values(
        ["cluster", "n"], ascending=[True, False]).drop_duplicates("cluster")
    sizes = frame.groupby("concept").size().rename("samples")
    owned = majority.groupby("concept").size().rename("clusters")
    return pd.concat([sizes, owned], axis=1).fillna(0).astype(int).sort_values("samples", ascending=False)


def spread_summary(per_concept: pd.DataFrame) -> dict:
    sizes = per_concept["samples"].to_numpy(dtype=float)
    clusters = per_concept["clusters"].to_numpy(dtype=float)
    slope = float(np.polyfit(np.log(sizes), np.log(clusters + 1.0), 1)[0]) if len(sizes) > 1 else float("nan")
    smaller_half = per_concept["samples"] <= per_concept["samples"].median()
    return {"concepts": int(len(per_concept)), "clusters": int(clusters.sum()),
            "loglog_slope": round(slope, 3),
            "concepts_with_a_cluster": int((clusters > 0).sum()),
            "clusters_of_10_largest_concepts": int(clusters[:10].sum()),
            "clusters_of_smaller_half": int(clusters[smaller_half.to_numpy()].sum())}
