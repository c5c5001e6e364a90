"""The scale benchmark's synthetic pool: the records later stages read, its planted pairs, its determinism."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from synthetic_pool import make_synthetic_pool  # noqa: E402

from tasks.common.catalog import Catalog, EmbeddingRun  # noqa: E402
from tasks.common.store import Store  # noqa: E402
from tasks.filters.dedup import hamming_pairs  # noqa: E402

EMBED_COLUMNS = ["uid", "key", "text", "clip_score", "embed_ok", "embed_reason", "phash", "thumb", "sha256", "width",
                 "height", "original_width", "original_height"]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    catalog = Catalog(Store(str(tmp_path_factory.mktemp("store"))))
    return catalog, make_synthetic_pool(catalog, "syn", 3000, shard_size=1000, dim=512, seed=3)


def _table(catalog: Catalog, shard) -> pd.DataFrame:
    with catalog.store.open(catalog.store.relative(shard.parquet)) as handle:
        return pd.read_parquet(handle)


def test_records_are_those_of_a_downloaded_and_embedded_pool(pool):
    catalog, synthetic = pool
    record = catalog.pool("syn")
    assert record.content_hash == synthetic.pool["content_hash"] and len(record.shards_with_samples) == 3
    run = EmbeddingRun(synthetic.embeddings)
    assert run.manifest["inputs"]["pool_manifest"] == record.content_hash
    assert [s.shard_id for s in run.shards] == [s.shard_id for s in record.shards]
    uids = []
    for shard in run.shards:
        table = _table(catalog, shard)
        assert list(table.columns) == EMBED_COLUMNS and len(table) == shard.rows == 1000
        image = catalog.store.read_npy(catalog.store.relative(shard.image_embeddings))
        text = catalog.store.read_npy(catalog.store.relative(shard.text_embeddings))
        assert image.dtype == text.dtype == np.float16 and image.shape == text.shape == (1000, 512)
        ok = table["embed_ok"].to_numpy()
        norms = np.linalg.norm(image.astype(np.float32), axis=1)
        assert np.allclose(norms[ok], 1, atol=1e-2) and np.all(norms[~ok] == 0)
        assert set(table.loc[~ok, "embed_reason"]) <= {"undecodable"} and table.loc[~ok, "clip_score"].isna().all()
        assert table["thumb"].map(len).eq(192).all() and table["uid"].str.len().eq(32).all()
        uids.append(table["uid"])
    assert not pd.concat(uids).duplicated().any()


def test_planted_pairs_are_what_the_truth_says(pool):
    catalog, synthetic = pool
    truth = synthetic.truth
    assert (truth["kind"] == "exact").sum() == 90 and (truth["kind"] == "near").sum() == 90
    near, exact = truth[truth["kind"] == "near"], truth[truth["kind"] == "exact"]
    assert near["phash_bits"].between(1, 4).all() and (exact["phash_bits"] == 0).all()
    assert (near["cosine"] > 0.97).all() and (exact["cosine"] > 0.999).all()
    assert (near["color_distance"] <= 4).all() and (exact["color_distance"] == 0).all()
    assert (truth["copy_shard"] != truth["source_shard"]).any()
    tables = pd.concat([_table(catalog, s) for s in EmbeddingRun(synthetic.embeddings).shards], ignore_index=True)
    by_uid = tables.set_index("uid")
    copy, source = by_uid.loc[exact["copy_uid"]], by_uid.loc[exact["source_uid"]]
    assert (copy["sha256"].to_numpy() == source["sha256"].to_numpy()).all()
    assert (copy["thumb"].to_numpy() == source["thumb"].to_numpy()).all()
    # every planted pair is within 4 bits when all pairs are compared; chance pairs are rare
    valid = tables["embed_ok"].to_numpy()
    i, j = hamming_pairs(tables["phash"].to_numpy()[valid], 4)
    uid = tables["uid"].to_numpy()[valid]
    found = {frozenset(p) for p in zip(uid[i], uid[j])}
    planted = {frozenset(p) for p in zip(truth["copy_uid"], truth["source_uid"])}
    assert planted <= found and len(found - planted) <= 2


def test_same_seed_same_pool_whatever_the_shard_size(pool, tmp_path):
    catalog, synthetic = pool
    other = Catalog(Store(str(tmp_path)))
    again = make_synthetic_pool(other, "syn", 3000, shard_size=1500, dim=512, seed=3)
    first = pd.concat([_table(catalog, s) for s in EmbeddingRun(synthetic.embeddings).shards], ignore_index=True)
    second = pd.concat([_table(other, s) for s in EmbeddingRun(again.embeddings).shards], ignore_index=True)
    pd.testing.assert_frame_equal(first.drop(columns=["key"]), second.drop(columns=["key"]))
    pd.testing.assert_frame_equal(synthetic.truth.drop(columns=["copy_shard", "source_shard"]),
                                  again.truth.drop(columns=["copy_shard", "source_shard"]))


def test_captions_give_the_rowwise_filters_work(pool):
    catalog, synthetic = pool
    stats = synthetic.stats
    assert 60 < stats["foreign"] < 200 and 40 < stats["short"] < 150 and 10 < stats["nsfw"] < 60
    assert 0 < stats["undecodable"] < 20 and 100 < stats["small"] < 400
