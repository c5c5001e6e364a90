"""Incremental filters on a grown pool: the new shards are treated against the previous run.

A pool of three shards is filtered; a fourth shard is added with planted copies of old samples
(some with a smaller uid, so the new copy is the one the rule keeps). The incremental run must
give the from-scratch decisions for exact and perceptual dedup and the CLIP score (their rules
do not depend on the order of arrival), flip and report the old keepers that a new sample
displaces, keep every old SemDeDup duplicate, and never form old-vs-old pairs. Through the
planning step on an imported pool: the old shards' row-wise work is copied, not redone, and it
equals a run from scratch.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import tasks.filters.run as filter_run
from tasks.cluster.hierarchical import normalise_rows
from tasks.common.catalog import Catalog, EmbeddedShard, EmbeddingRun
from tasks.common.store import Store
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import band_keys, bucket_pairs, hamming_pairs
from tasks.filters.plan import filter_folder, plan_filter
from tasks.filters.plan import filter_run as plan_run
from tasks.filters.semdedup import later_duplicates, new_vs_cluster_duplicates
from test_poolwide import CONFIG, decisions, write_pool  # noqa: E402  (tests/filters is on sys.path)

ROWS = 200
OLD, NEW = 3, 1


def _frame(store: Store, path: str) -> pd.DataFrame:
    with store.open(path) as handle:
        return pd.read_parquet(handle)


def _plant(store: Store, run: EmbeddingRun, rows_files: dict, old: pd.DataFrame) -> dict:
    """Copies of old samples in the new shard; returns the rows (global positions) involved."""
    new_id = list(rows_files)[OLD]
    frame = _frame(store, rows_files[new_id])
    vectors = store.read_npy(store.relative(run.shards[OLD].image_embeddings)).astype(np.float32)
    old_vectors = np.concatenate([store.read_npy(store.relative(s.image_embeddings)).astype(np.float32)
                                  for s in run.shards[:OLD]])
    clean = (old["keep_exact_dedup"] & old["keep_phash_dedup"] & old["keep_semdedup"] & old["embed_ok"]
             & (old["embed_reason"] == "")).to_numpy()
    o2, o3, o4, o5 = np.flatnonzero(clean)[[50, 100, 150, 200]]
    # an old keeper with old duplicates: displacing it repoints them
    o1 = np.flatnonzero(clean & old["uid"].isin(old["duplicate_of_exact_dedup"]).to_numpy())[0]
    plants = {  # new row -> (uid, copied old row, what is copied)
        0: ("0" * 32, o1, "sha"), 1: ("f" * 32, o2, "sha"), 2: ("0" * 31 + "1", o3, "phash"),
        3: ("f" * 31 + "e", o4, "phash"), 4: (None, o5, "vector")}
    for row, (uid, source, what) in plants.items():
        frame.loc[row, ["embed_ok", "embed_reason"]] = [True, ""]
        if uid is not None:
            frame.loc[row, "uid"] = uid
        if what == "sha":
            frame.loc[row, "sha256"] = old["sha256"].iloc[source]
        elif what == "phash":
            frame.loc[row, "phash"] = np.int64(old["phash"].iloc[source]) ^ np.int64(1 << row)
            frame.at[row, "thumb"] = _frame(store, rows_files[old["shard"].iloc[source]])["thumb"].iloc[
                old["row"].iloc[source]]
        else:
            vectors[row] = old_vectors[source] + 1e-3 * np.random.default_rng(1).normal(size=vectors.shape[1])
    store.write_bytes(rows_files[new_id], frame.to_parquet(index=False))
    buffer = io.BytesIO()
    np.save(buffer, vectors.astype(np.float16))
    store.write_bytes(store.relative(run.shards[OLD].image_embeddings), buffer.getvalue())
    return {"displaced_exact": o1, "copied_exact": o2, "displaced_phash": o3, "copied_phash": o4, "semantic": o5,
            "new": OLD * ROWS + np.arange(5)}


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(filter_run, "EXACT_ROWS_PER_PARTITION", 97)
    mp.setattr(filter_run, "BAND_ROWS_PER_PARTITION", 211)
    store = Store(str(tmp_path_factory.mktemp("grown") / "store"))
    run, rows_files, _ = write_pool(store, n_shards=OLD + NEW, rows=ROWS, seed=7)
    catalog = Catalog(store)
    old_run = EmbeddingRun({**run.manifest, "outputs": {"shards": run.manifest["outputs"]["shards"][:OLD]}})
    old_files = dict(list(rows_files.items())[:OLD])
    previous = filter_run.poolwide_filters(catalog, old_run, old_files, CONFIG, "filters/test/old", {"embeddings": "o"})
    old = decisions(store, previous)
    old["shard"] = np.repeat(list(old_files), ROWS)
    old["row"] = np.tile(np.arange(ROWS), OLD)
    planted = _plant(store, run, rows_files, old)
    incremental = filter_run.poolwide_filters(catalog, run, rows_files, CONFIG, "filters/test/grown",
                                              {"embeddings": "h"}, previous=previous)
    scratch = filter_run.poolwide_filters(catalog, run, rows_files, CONFIG, "filters/test/scratch", {"embeddings": "h"})
    yield {"store": store, "run": run, "rows_files": rows_files, "old": old, "previous": previous, "incremental": incremental, "scratch": scratch,
           "planted": planted, "grown": decisions(store, incremental), "fresh": decisions(store, scratch)}
    mp.undo()


def test_dedup_and_clip_score_equal_a_run_from_scratch(grown):
    out, fresh = grown["grown"], grown["fresh"]
    for column in ("keep_exact_dedup", "duplicate_of_exact_dedup", "keep_phash_dedup", "duplicate_of_phash_dedup",
                   "keep_clip_score", "reason_clip_score", "uid", "keep_basic"):
        np.testing.assert_array_equal(out[column].to_numpy(), fresh[column].to_numpy(), err_msg=column)
    assert grown["incremental"]["outputs"]["report"] != grown["scratch"]["outputs"]["report"]


def test_new_copies_are_removed_and_a_better_new_copy_flips_the_old_decision(grown):
    out, old, planted = grown["grown"], grown["old"], grown["planted"]
    new = planted["new"]
    assert not out["keep_exact_dedup"].iloc[planted["displaced_exact"]]  # the new copy has the smaller uid
    assert out["duplicate_of_exact_dedup"].iloc[planted["displaced_exact"]] == "0" * 32
    assert out["keep_exact_dedup"].iloc[new[0]]
    assert out["keep_exact_dedup"].iloc[planted["copied_exact"]]  # the old decision stays
    assert out["duplicate_of_exact_dedup"].iloc[new[1]] == old["uid"].iloc[planted["copied_exact"]]
    assert not out["keep_phash_dedup"].iloc[planted["displaced_phash"]] and out["keep_phash_dedup"].iloc[new[2]]
    assert not out["keep_phash_dedup"].iloc[new[3]] and out["keep_phash_dedup"].iloc[planted["copied_phash"]]
    report = grown["store"].read_json(grown["store"].relative(grown["incremental"]["outputs"]["report"]))
    section = report["incremental"]
    assert section == grown["incremental"]["stats"]["incremental"]
    assert (section["old_shards"], section["new_shards"], section["new_samples"]) == (OLD, NEW, ROWS)
    assert section["previous_run"] == grown["previous"]["outputs"]["folder"]
    assert grown["incremental"]["inputs"]["previous_filters"] == grown["previous"]["content_hash"]
    before, after = old, out.iloc[:OLD * ROWS]
    for name in ("exact_dedup", "phash_dedup", "semdedup", "clip_score"):
        assert section["filters"][name]["mode"] != "" and section["filters"][name]["why"]
        flipped = (before[f"keep_{name}"].to_numpy() & ~after[f"keep_{name}"].to_numpy()).sum()
        assert section["filters"][name]["old_decisions_changed"]["removed"] == flipped, name
    assert section["filters"]["exact_dedup"]["old_decisions_changed"]["removed"] >= 1
    assert section["filters"]["exact_dedup"]["old_decisions_changed"]["repointed"] >= 1
    assert (out["duplicate_of_exact_dedup"].iloc[:OLD * ROWS] == "0" * 32).sum() >= 2  # o1 and its old copies
    assert section["filters"]["phash_dedup"]["old_decisions_changed"]["removed"] >= 1
    assert section["old_samples_changed"]["removed"] == int((before["keep"].to_numpy() & ~after["keep"].to_numpy()).sum())
    assert "incremental" not in grown["scratch"]["stats"]


def test_semdedup_keeps_old_duplicates_and_catches_a_new_copy(grown):
    out, old, planted = grown["grown"], grown["old"], grown["planted"]
    assert grown["incremental"]["stats"]["incremental"]["filters"]["semdedup"]["mode"] == "incremental"
    was_removed = ~old["keep_semdedup"].to_numpy()
    assert not out["keep_semdedup"].to_numpy()[:OLD * ROWS][was_removed].any()  # old duplicates stay duplicates
    pair = out["keep_semdedup"].iloc[[planted["semantic"], planted["new"][4]]].to_numpy()
    assert pair.sum() == 1  # one of the old sample and its new copy stays
    assert "semdedup_centroids" in grown["incremental"]["outputs"]
    store = grown["store"]
    assert store.list("filters/test/grown/semdedup") and (
        store.list("filters/test/grown/semdedup") == [p.replace("/old/", "/grown/")
                                                      for p in store.list("filters/test/old/semdedup")])


def test_buckets_of_an_incremental_run_pair_new_rows_only():
    rng = np.random.default_rng(5)
    base = rng.integers(-2**63, 2**63 - 1, 300, dtype=np.int64)
    hashes = np.concatenate([base, base[:150] ^ (np.int64(1) << rng.integers(0, 64, 150)), np.zeros(20, np.int64)])
    old = np.zeros(len(hashes), dtype=bool)
    old[rng.choice(len(hashes), 250, replace=False)] = True
    frame = pd.DataFrame({"id": np.arange(len(hashes), dtype=np.int64), "phash": hashes, "valid": True, "old": old})
    pairs = bucket_pairs(*band_keys(frame, 2, 4), max_distance=2)
    i, j = hamming_pairs(hashes, 2)
    expected = sorted((a, b) for a, b in zip(i.tolist(), j.tolist()) if not (old[a] and old[b]))
    assert sorted(zip(pairs["a"].tolist(), pairs["b"].tolist())) == expected and expected


def test_new_vs_cluster_duplicates_is_later_duplicates_without_old_pairs():
    rng = np.random.default_rng(2)
    base = rng.normal(size=(300, 12)).astype(np.float32)
    points = normalise_rows(np.concatenate([base, base[:120] + 0.01 * rng.normal(size=(120, 12)).astype(np.float32)]))
    labels = rng.integers(0, 4, len(points))
    labels[300:] = labels[:120]
    rank = rng.random(len(points)).astype(np.float32)
    new = rng.random(len(points)) < 0.3
    found = new_vs_cluster_duplicates(points, labels, rank, new, 0.98, window_rows=7, window_columns=11)
    similarity = points @ points.T
    better = (rank[:, None] < rank[None, :]) & (labels[:, None] == labels[None, :])  # row i better than column j
    counted = better & (new[:, None] | new[None, :]) & (similarity > 0.98)
    np.testing.assert_array_equal(found, counted.any(axis=0))
    everything = later_duplicates(points, labels, rank, 0.98)
    assert not (found & ~everything).any() and found[new].tolist() == everything[new].tolist()


# ----- through the planning step, on an imported pool -------------------------------------------
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def _filter(store: Store, pool: str, embeddings: dict, filters: dict) -> tuple[dict, dict]:
    """The filter tasks of flows/embed_filter.py, in this process; returns (the run plan, the manifest)."""
    catalog = Catalog(store)
    plan = plan_filter(catalog, catalog.pool(pool), embeddings, filters)
    run = plan_run(catalog, plan, embeddings)
    config = FilterConfig.from_dict(plan["config"])
    rows = {s["shard_id"]: filter_run.rowwise_filters(
        store, EmbeddedShard.from_dict(s), config, catalog.filter_rows(run["folder"], s["shard_id"]),
        reuse=run["reuse"].get(s["shard_id"])) for s in embeddings["outputs"]["shards"]}
    manifest = filter_run.poolwide_filters(catalog, EmbeddingRun(embeddings), rows, config, run["folder"],
                                           {"embeddings": embeddings["content_hash"],
                                            "pool_manifest": plan["pool"]["content_hash"],
                                            "eval_tasklist": plan["tasklist_hash"]}, previous=run["previous"])
    catalog.set_latest_runs(pool, embeddings, manifest)
    return run, manifest


def test_a_grown_imported_pool_reuses_the_old_shards_rowwise_work(tmp_path, monkeypatch):
    from synthetic_sources import make_datacomp_pool

    from tasks.pool_import.run import check_uids, import_shard, plan_import, publish_import

    def imported(store: Store, source: str) -> dict:
        catalog = Catalog(store)
        plan = plan_import(catalog, "grow", source)
        check_uids(store, plan)
        return publish_import(catalog, plan, [import_shard(store, plan, shard) for shard in plan["shards"]])

    filters = {"min_image_side": 48, "clip_score_top_fraction": 0.8, "semdedup_threshold": 0.999}
    source, store = tmp_path / "source", Store(str(tmp_path / "store"))
    make_datacomp_pool(str(source), shards=2, rows_per_shard=40, seed=5, dim_l14=8, dim_b32=4, exact_duplicates=0.1)
    first = imported(store, str(source))
    run, old = _filter(store, "grow", first["embeddings"], filters)
    assert run["previous"] is None and "incremental" not in old["stats"]
    extra = tmp_path / "extra"
    make_datacomp_pool(str(extra), shards=3, rows_per_shard=40, seed=6, dim_l14=8, dim_b32=4, exact_duplicates=0.1)
    for suffix in (".parquet", ".npz"):
        (source / f"00000002{suffix}").write_bytes((extra / f"00000002{suffix}").read_bytes())
    second = imported(store, str(source))
    decided = []
    original = filter_run.basic_decisions
    monkeypatch.setattr(filter_run, "basic_decisions", lambda frame, config: decided.append(len(frame))
                        or original(frame, config))
    run, grown = _filter(store, "grow", second["embeddings"], filters)
    assert run["previous"]["content_hash"] == old["content_hash"] and len(run["reuse"]) == 2
    assert decided == [40]  # only the new shard's row-wise filters ran
    section = grown["stats"]["incremental"]
    assert (section["old_shards"], section["new_shards"]) == (2, 1)
    assert section["filters"]["exact_dedup"]["mode"] == "incremental"
    assert section["filters"]["semdedup"]["mode"] == "incremental"
    # the row-wise decisions equal a run from scratch's
    catalog = Catalog(store)
    plan = plan_filter(catalog, catalog.pool("grow"), second["embeddings"], filters)
    scratch = filter_folder(catalog, plan, second["embeddings"])
    assert scratch != run["folder"]
    for shard in second["embeddings"]["outputs"]["shards"]:
        target = catalog.filter_rows(scratch, shard["shard_id"])
        filter_run.rowwise_filters(store, EmbeddedShard.from_dict(shard), FilterConfig.from_dict(plan["config"]), target)
        pd.testing.assert_frame_equal(_frame(store, target), _frame(store, catalog.filter_rows(run["folder"],
                                                                                              shard["shard_id"])))
    # a rerun finds the finished run: nothing is redone
    again, manifest = _filter(store, "grow", second["embeddings"], filters)
    assert again["folder"] == run["folder"] and again["previous"] is None
    assert manifest["content_hash"] == grown["content_hash"]



def test_semdedup_runs_from_scratch_when_the_previous_run_kept_no_centroids(grown):
    store = grown["store"]
    previous = grown["previous"]
    older = {**previous, "outputs": {**previous["outputs"], "folder": store.uri("filters/test/made-before-centroids")}}
    manifest = filter_run.poolwide_filters(Catalog(store), grown["run"], grown["rows_files"], CONFIG, "filters/test/refit",
                                           {"embeddings": "h"}, previous=older)
    assert manifest["stats"]["incremental"]["filters"]["semdedup"]["mode"].startswith("from scratch: the previous run "
                                                                                      "kept no k-means centroids")
    np.testing.assert_array_equal(decisions(store, manifest)["keep_semdedup"].to_numpy(),
                                  grown["fresh"]["keep_semdedup"].to_numpy())
