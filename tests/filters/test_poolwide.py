"""The pool-wide filters on Dask against their single-process versions, on small multi-shard pools.

Every distributed step must give the decisions of the in-process reference: exact dedup against
a groupby over the whole pool, perceptual dedup against all pairs (duplicate groups spanning
shards and partitions included), SemDeDup on a two-worker cluster against the local scheduler,
the CLIP score cutoff against numpy's quantile; and a worker killed mid-run changes nothing.
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

import tasks.filters.run as filter_run
from tasks.common.catalog import Catalog, EmbeddingRun
from tasks.common.store import Store
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import all_pairs_perceptual_duplicates, band_keys, bucket_pairs, hamming_pairs
from tasks.filters.semdedup import semantic_duplicates

ROWS = 300


def write_pool(store: Store, n_shards: int = 4, rows: int = ROWS, seed: int = 0) -> tuple[EmbeddingRun, dict]:
    """Row-wise decisions and float16 embeddings of ``n_shards`` shards, with duplicates planted
    across shards: exact copies (same sha256), pHash neighbours (1-3 bits, same thumbnail) and
    semantic copies (cosine > 0.999)."""
    rng = np.random.default_rng(seed)
    n = n_shards * rows
    uid = np.array([f"{v:032x}" for v in rng.integers(0, 2**62, n)])
    phash = rng.integers(-2**63, 2**63 - 1, n, dtype=np.int64)
    sha = np.array([f"{v:064x}" for v in rng.integers(0, 2**62, n)], dtype=object)
    thumbs = rng.integers(0, 256, (n, 192), dtype=np.uint8)
    vectors = rng.normal(size=(n, 32)).astype(np.float32)
    source = rng.choice(n, 60, replace=False)
    copies = rng.choice(np.setdiff1d(np.arange(n), source), 60, replace=False)
    exact, near, semantic = copies[:20], copies[20:40], copies[40:]
    sha[exact] = sha[source[:20]]
    phash[exact] = phash[source[:20]]
    thumbs[exact] = thumbs[source[:20]]
    flips = np.int64(1) << rng.integers(0, 64, (20, 3))
    phash[near] = phash[source[20:40]] ^ flips[:, 0] ^ np.where(np.arange(20) % 2 == 0, flips[:, 1], 0)
    thumbs[near] = thumbs[source[20:40]]
    vectors[semantic] = vectors[source[40:]] + 0.001 * rng.normal(size=(20, 32)).astype(np.float32)
    chain = copies[:3]  # a -> b -> c one bit apart each: a group only through b (transitive, across shards)
    phash[chain[1]] = phash[chain[0]] ^ 1
    phash[chain[2]] = phash[chain[1]] ^ 2
    thumbs[chain] = thumbs[chain[0]]
    sha[chain[1:]] = [f"{v:064x}" for v in rng.integers(0, 2**62, 2)]
    embed_ok = rng.random(n) > 0.02
    reason = np.where(embed_ok, "", "undecodable")
    scores = np.where(embed_ok, rng.normal(0.3, 0.05, n), np.nan)
    shards, rows_files = [], {}
    for s in range(n_shards):
        part = slice(s * rows, (s + 1) * rows)
        shard_id = f"{s:05d}-test-{s:05d}"
        frame = pd.DataFrame({"uid": uid[part], "key": [f"{i:09d}" for i in range(part.start, part.stop)],
                              "text": "a photo", "clip_score": scores[part], "embed_ok": embed_ok[part],
                              "embed_reason": reason[part], "phash": phash[part],
                              "thumb": [t.tobytes() for t in thumbs[part]], "sha256": sha[part],
                              "keep_basic": True, "reason_basic": ""})
        rows_file = f"filters/test/rows/{shard_id}.parquet"
        store.write_bytes(rows_file, frame.to_parquet(index=False))
        buffer = io.BytesIO()
        np.save(buffer, vectors[part].astype(np.float16))
        embeddings = store.write_bytes(f"embeddings/test/{shard_id}.img.npy", buffer.getvalue())
        rows_files[shard_id] = rows_file
        shards.append({"shard_id": shard_id, "parquet": "", "image_embeddings": embeddings, "text_embeddings": "",
                       "caption_embeddings": None, "rows": rows})
    truth = {"uid": uid, "phash": phash, "sha": sha, "thumbs": thumbs, "valid": embed_ok, "vectors": vectors,
             "scores": scores, "semantic": (source[40:], semantic), "chain": chain}
    return EmbeddingRun({"stage": "embed", "name": "test", "content_hash": "h", "outputs": {"shards": shards}}), rows_files, truth


CONFIG = FilterConfig(semdedup_threshold=0.99, semdedup_clusters=8, clip_score_top_fraction=0.7,
                      phash_max_distance=3, phash_max_color_distance=8.0)


def decisions(store: Store, manifest: dict) -> pd.DataFrame:
    frames = []
    for uri in manifest["outputs"]["decisions"].values():
        with store.open(store.relative(uri)) as handle:
            frames.append(pd.read_parquet(handle))
    return pd.concat(frames, ignore_index=True)


def run_filters(store: Store, run: EmbeddingRun, rows_files: dict, folder: str, client=None,
                config: FilterConfig = CONFIG) -> dict:
    return filter_run.poolwide_filters(Catalog(store), run, rows_files, config, folder, {"embeddings": "h"},
                                       client=client)


@pytest.fixture()
def pool(tmp_path, monkeypatch):
    # many small partitions: duplicate groups must be found across partitions, not inside one
    monkeypatch.setattr(filter_run, "EXACT_ROWS_PER_PARTITION", 97)
    monkeypatch.setattr(filter_run, "BAND_ROWS_PER_PARTITION", 211)
    store = Store(str(tmp_path / "store"))
    run, rows_files, truth = write_pool(store)
    return store, run, rows_files, truth


def test_exact_and_perceptual_dedup_equal_the_whole_pool_methods(pool):
    store, run, rows_files, truth = pool
    out = decisions(store, run_filters(store, run, rows_files, "filters/test/run"))
    uid = pd.Series(truth["uid"])
    keeper = uid.groupby(truth["sha"]).transform("min")
    expected_exact = np.where(uid != keeper, keeper, "")
    np.testing.assert_array_equal(out["duplicate_of_exact_dedup"].to_numpy(), expected_exact)
    reference = all_pairs_perceptual_duplicates(truth["uid"], truth["phash"], 3, truth["valid"], truth["thumbs"], 8.0)
    expected = np.full(len(uid), "", dtype=object)
    expected[reference["id"].to_numpy()] = reference["duplicate_of"].to_numpy()
    np.testing.assert_array_equal(out["duplicate_of_phash_dedup"].to_numpy(), expected)
    chain = truth["chain"]
    assert out["keep_phash_dedup"].to_numpy()[chain].sum() == 1  # a, b, c: one group, one stays
    assert (~out["keep_phash_dedup"]).sum() >= 38  # the planted copies at least
    finite = truth["scores"][np.isfinite(truth["scores"])]
    report = store.read_json("filters/test/run/report.json")
    assert report["clip_score_cutoff"] == pytest.approx(np.quantile(finite, 0.3), rel=1e-12)
    assert report["samples"] == len(uid) and report["kept"] == int(out["keep"].sum())
    assert report["removed_by"]["phash_dedup"] == int((~out["keep_phash_dedup"]).sum())


def test_band_buckets_find_exactly_the_all_pairs():
    rng = np.random.default_rng(3)
    base = rng.integers(-2**63, 2**63 - 1, 400, dtype=np.int64)
    hashes = np.concatenate([base, base[:200] ^ (np.int64(1) << rng.integers(0, 64, 200)),
                             np.zeros(30, np.int64)])  # a bucket of 30 identical flat-image hashes
    frame = pd.DataFrame({"id": np.arange(len(hashes), dtype=np.int64), "phash": hashes, "valid": True})
    for distance in (0, 2, 4):
        pairs = bucket_pairs(*band_keys(frame, distance, 5), max_distance=distance)
        i, j = hamming_pairs(hashes, distance)
        assert sorted(zip(pairs["a"], pairs["b"])) == sorted(zip(i.tolist(), j.tolist()))


def test_semantic_duplicates_on_two_workers_equal_the_local_run(pool):
    from distributed import Client, LocalCluster

    store, run, rows_files, truth = pool
    shards = [(store.relative(s.image_embeddings), np.flatnonzero(truth["valid"][k * ROWS:(k + 1) * ROWS]),
               (np.int64(k) << 32) | np.flatnonzero(truth["valid"][k * ROWS:(k + 1) * ROWS]))
              for k, s in enumerate(run.shards)]
    local = semantic_duplicates(store, shards, 0.99, cluster_size=150, engine="dask", max_partition_rows=400)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        distributed = semantic_duplicates(store, shards, 0.99, cluster_size=150, engine="dask", client=client,
                                          max_partition_rows=400)
    np.testing.assert_array_equal(local, distributed)
    source, copies = truth["semantic"]
    both = truth["valid"][source] & truth["valid"][copies]
    as_ids = lambda rows: ((rows // ROWS).astype(np.int64) << 32) | (rows % ROWS)  # noqa: E731
    found = np.isin(as_ids(source), local) | np.isin(as_ids(copies), local)
    assert found[both].mean() >= 0.9  # pairs split by a cluster boundary may be missed, as in SemDeDup


def test_two_workers_one_killed_mid_run_give_the_same_decisions(pool):
    from distributed import Client, LocalCluster

    store, run, rows_files, _ = pool
    local = decisions(store, run_filters(store, run, rows_files, "filters/test/local"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        pids = list(client.run(os.getpid).values())
        killer = threading.Timer(2.0, os.kill, (pids[0], signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        try:
            distributed = decisions(store, run_filters(store, run, rows_files, "filters/test/dask", client))
        finally:
            killer.cancel()
        assert time.monotonic() - started > 2.0, "the run ended before the kill: the test proves nothing"
        assert pids[0] not in client.run(os.getpid).values()  # the nanny restarted a killed worker
    pd.testing.assert_frame_equal(local, distributed)


def test_a_coarse_cluster_larger_than_a_partition_is_split(pool, monkeypatch):
    import tasks.filters.semdedup as semdedup

    store, run, rows_files, truth = pool
    seen = []
    original = semdedup._partition_duplicates

    def recording(*pieces, **kwargs):
        seen.append(sum(len(p[0]) for p in pieces))
        return original(*pieces, **kwargs)

    monkeypatch.setattr(semdedup, "_partition_duplicates", recording)
    shards = [(store.relative(s.image_embeddings), np.arange(ROWS), (np.int64(k) << 32) | np.arange(ROWS))
              for k, s in enumerate(run.shards)]
    # one coarse cluster for 1,200 rows (cluster_size 1,000), partitions of at most 250 rows
    found = semantic_duplicates(store, shards, 0.99, cluster_size=1000, engine="dask", max_partition_rows=250)
    assert sum(seen) == 4 * ROWS and max(seen) <= 250 and len(seen) >= 5
    source, copies = truth["semantic"]
    as_ids = lambda rows: ((rows // ROWS).astype(np.int64) << 32) | (rows % ROWS)  # noqa: E731
    assert (np.isin(as_ids(source), found) | np.isin(as_ids(copies), found)).mean() >= 0.8


def test_no_finite_clip_score_is_reported_as_skipped_and_an_empty_run_is_refused(tmp_path):
    store = Store(str(tmp_path / "store"))
    run, rows_files, _ = write_pool(store, n_shards=2, rows=100)
    for rows_file in rows_files.values():
        with store.open(rows_file) as handle:
            frame = pd.read_parquet(handle)
        store.write_bytes(rows_file, frame.assign(clip_score=np.nan).to_parquet(index=False))
    config = FilterConfig(clip_score_top_fraction=0.5, phash_max_distance=3)
    manifest = run_filters(store, run, rows_files, "filters/test/nan", config=config)
    assert "no finite CLIP score" in manifest["stats"]["skipped"]["clip_score"]
    from tasks.common.errors import InputError

    with pytest.raises(InputError, match="no shard to filter"):
        run_filters(store, run, {}, "filters/test/empty", config=config)
