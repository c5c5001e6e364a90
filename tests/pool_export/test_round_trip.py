"""Round trip on the demo pool: embed and filter it, export it, import the export, curate both the same way.

What may legitimately differ, and how the comparison allows for exactly that and nothing more:

- samples without embeddings (``embed_ok`` false) are not exported, so the imported pool lacks
  them: decisions are compared on the exported uids, and the imported uids must be exactly those;
- exact dedup keeps the smallest uid of a sha256 group: in a group that holds a sample without
  embeddings, that sample is gone after the round trip, so the group's kept sample may change.
  Such groups are compared by their own rule (the import keeps the smallest exported uid), and the
  demo pool must have none for the tree and subset comparisons, which need the same kept samples;
- pHash dedup needs image bytes: the original is filtered without it, the import reports it skipped;
- shard ids differ (the import mints its own), so everything is compared per uid; the order of the
  samples (export numbering = pool order, rows in tar order) is the same, and that order is what
  the seeded k-means and samplers see, so assignments and subsets must be equal, not just alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flows.curate import curate
from flows.embed_filter import run_embed_filter
from flows.export_pool import export_pool
from tasks.cluster.tree import load_tree
from tasks.common.store import Store

FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.9, "semdedup_threshold": 0.99999}
COMPARED = ("basic", "nsfw_text", "exact_dedup", "clip_score", "semdedup")
CLUSTERING = {"levels": [12, {"k": 4, "resampling_steps": 2}], "engine": "dask", "seed": 3}
SUBSETS = {name: {"recipe": recipe, "reshard": False}  # an imported pool has no tars to reshard
           for name, recipe in {"filtered": [{"step": "filters"}],
                                "random": [{"step": "filters"}, {"step": "random", "target": 80, "seed": 7}],
                                "balanced": [{"step": "filters"}, {"step": "hkmeans", "target": 80, "seed": 5}]}.items()}


def decisions(filters: dict) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(uri) for uri in filters["outputs"]["decisions"].values()], ignore_index=True)


def embedding_tables(embeddings: dict) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(shard["parquet"]) for shard in embeddings["outputs"]["shards"]],
                     ignore_index=True)


def assignments(store: Store, tree: dict) -> pd.DataFrame:
    """Per uid, its cluster at every level of the tree."""
    levels = load_tree(store, store.relative(tree["outputs"]["folder"]))
    frame = pd.read_parquet(tree["outputs"]["inputs"])[["uid"]]
    labels = levels[0].labels
    for number, level in enumerate(levels, 1):
        labels = labels if number == 1 else level.labels[labels]
        frame[f"level_{number}"] = labels
    return frame


def test_export_then_import_curates_the_same(small_pool, tiny_checkpoint):
    from flows.import_pool import import_pool  # written alongside the exporter

    root = str(small_pool["store"])
    store = Store(root)
    embedder = {"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64}
    original = run_embed_filter(root, "e2e", embedder, {**FILTERS, "phash_dedup": False})
    exported = export_pool(store=root, pool_name="e2e")
    imported = import_pool(store=root, pool_name="e2e-imported", source=exported["outputs"]["folder"] + "/metadata",
                           format="datacomp", embeddings="l14", filters=FILTERS)

    table = embedding_tables(original["embeddings"])
    embedded = table[table["embed_ok"]]
    assert exported["rows"]["exported"] == len(embedded)
    assert exported["rows"]["not_exported"] == int((~table["embed_ok"]).sum())
    ours, theirs = decisions(original["filters"]), decisions(imported["filters"])
    assert sorted(theirs["uid"]) == sorted(embedded["uid"])  # every exported sample, nothing else
    # the import's own records: same scores and embeddings, per uid
    again = embedding_tables(imported["embeddings"]).set_index("uid").loc[embedded["uid"]]
    np.testing.assert_array_equal(again["clip_score"].to_numpy(), embedded["clip_score"].to_numpy())

    # exact-dedup groups that held a sample without embeddings (see the module docstring)
    lost = set(table.loc[~table["embed_ok"], "sha256"])
    tainted = set(embedded.loc[embedded["sha256"].isin(lost), "uid"])
    ours = ours.set_index("uid").loc[embedded["uid"]]
    theirs = theirs.set_index("uid").loc[embedded["uid"]]
    for name in COMPARED:
        column = f"keep_{name}"
        assert column in ours and column in theirs, name
        compare = ~ours.index.isin(tainted) if name == "exact_dedup" else np.ones(len(ours), dtype=bool)
        differ = ours.index[compare & (ours[column] != theirs[column]).to_numpy()]
        assert len(differ) == 0, f"{name}: {len(differ)} uids decided differently, e.g. {list(differ[:3])}"
    groups = embedded[embedded["uid"].isin(tainted)].groupby("sha256")["uid"].min()
    assert set(theirs.index[theirs["keep_exact_dedup"] & theirs.index.isin(tainted)]) == set(groups)
    report = store.read_json(store.relative(imported["filters"]["outputs"]["report"]))
    assert "phash_dedup" in report["skipped"]
    assert not tainted, "a sample without embeddings shares its image with exported ones: kept sets must differ"
    assert (ours["keep"] == theirs["keep"]).all()

    # the same tree and the same subsets, from the same seeds
    trees = {pool: curate(store=root, pool_name=pool, clustering=CLUSTERING, subsets=SUBSETS)
             for pool in ("e2e", "e2e-imported")}
    a, b = (assignments(store, trees[pool]["tree"]).set_index("uid") for pool in ("e2e", "e2e-imported"))
    assert sorted(a.index) == sorted(b.index) == sorted(ours.index[ours["keep"]])
    pd.testing.assert_frame_equal(a, b.loc[a.index])
    for name in SUBSETS:
        uids = [pd.read_parquet(trees[pool]["subsets"][name]["outputs"]["parquet"])["uid"].tolist()
                for pool in ("e2e", "e2e-imported")]
        assert uids[0] == uids[1] and len(uids[0]) > 0, name
