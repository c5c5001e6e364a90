"""Embedding one shard: row alignment, scores, per-sample reasons, resume, bad models."""

import io
import json
import shutil
import tarfile

import numpy as np
import pandas as pd
import pytest

from tasks.common.catalog import Catalog, ShardRecord
from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.embed.run import embed_shard as embed_shard_record
from tasks.embed.spec import EmbedderSpec


def embed_shard(store, tar, parquet, spec, folder, shard_id="00000-test-00000", n_success=None):
    """One shard of the pool, by its record, into the files the catalog gives it under ``folder``."""
    record = ShardRecord(shard_id=shard_id, tar=tar, parquet=parquet, n_rows=0,
                         n_success=n_success or 0, content_hash="")
    return embed_shard_record(store, record, spec, Catalog.embedded_shard(folder, shard_id,
                                                                            bool(spec.caption_model)))


@pytest.fixture(scope="module")
def spec(tiny_checkpoint):
    return EmbedderSpec("Tiny-ViT-48px", tiny_checkpoint, batch_size=64)


def _load(store, rel):
    return np.load(io.BytesIO(store.read_bytes(rel)))


def test_outputs_are_row_aligned_with_the_shard(small_pool, spec, tmp_path):
    shard = small_pool["manifest"]["outputs"]["shards"][0]
    store = Store(str(tmp_path))
    summary = embed_shard(store, shard["tar"], shard["parquet"], spec, "emb", shard["shard_id"])
    name = shard["shard_id"]
    assert summary == {"shard_id": name, "parquet": f"emb/{name}.parquet", "image_embeddings": f"emb/{name}.img.npy",
                       "text_embeddings": f"emb/{name}.txt.npy", "caption_embeddings": None,
                       "rows": shard["n_success"], "embedded": shard["n_success"], "reasons": {}}
    table = pd.read_parquet(store.path(f"emb/{name}.parquet"))
    images, texts = _load(store, f"emb/{name}.img.npy"), _load(store, f"emb/{name}.txt.npy")
    assert images.shape == (len(table), 128) == texts.shape and images.dtype == np.float16
    with tarfile.open(shard["tar"]) as tar:
        uids = [json.load(tar.extractfile(m))["uid"] for m in tar if m.name.endswith(".json")]
    assert table["uid"].tolist() == uids
    assert np.allclose(np.linalg.norm(images.astype(np.float32), axis=1), 1, atol=1e-2)
    cosine = (images.astype(np.float32) * texts.astype(np.float32)).sum(axis=1)
    assert np.allclose(table["clip_score"], cosine, atol=2e-3)
    meta = pd.read_parquet(shard["parquet"]).set_index("uid")
    assert (table.set_index("uid")["sha256"] == meta.loc[table["uid"], "sha256"]).all()
    assert table["phash"].nunique() > len(table) * 0.5


def test_finished_shard_is_not_embedded_again(small_pool, spec, tmp_path):
    shard = small_pool["manifest"]["outputs"]["shards"][1]
    store = Store(str(tmp_path))
    first = embed_shard(store, shard["tar"], shard["parquet"], spec, "emb")
    before = {p: (tmp_path / p).stat().st_mtime_ns for p in store.list("emb")}
    assert embed_shard(store, shard["tar"], shard["parquet"], spec, "emb") == first
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in store.list("emb")} == before


def test_undecodable_image_keeps_its_row_with_a_reason(small_pool, spec, tmp_path):
    shard = small_pool["manifest"]["outputs"]["shards"][2]
    broken = tmp_path / "in" / "00000-broken" / "00007.tar"
    broken.parent.mkdir(parents=True)
    with tarfile.open(shard["tar"]) as source, tarfile.open(broken, "w") as target:
        spoiled = None
        for member in source:
            data = source.extractfile(member).read()
            if member.name.endswith(".jpg") and spoiled is None:
                spoiled, data = member.name.split(".")[0], b"not a jpeg at all"
                member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    shutil.copy(shard["parquet"], broken.with_suffix(".parquet"))
    store = Store(str(tmp_path / "store"))
    summary = embed_shard(store, str(broken), str(broken.with_suffix(".parquet")), spec, "emb")
    assert summary["reasons"] == {"undecodable": 1} and summary["embedded"] == summary["rows"] - 1
    table = pd.read_parquet(store.path(summary["parquet"]))
    row = table.index[table["key"] == spoiled.rsplit("/", 1)[-1]][0]
    assert not table.loc[row, "embed_ok"] and table.loc[row, "embed_reason"] == "undecodable"
    assert np.isnan(table.loc[row, "clip_score"])
    assert not _load(store, summary["parquet"].replace(".parquet", ".img.npy"))[row].any()


def test_caption_embeddings_from_the_packaged_model(small_pool, tiny_checkpoint, tmp_path):
    shard = small_pool["manifest"]["outputs"]["shards"][3]
    store = Store(str(tmp_path))
    spec = EmbedderSpec("Tiny-ViT-48px", tiny_checkpoint, batch_size=64, caption_model="minilm")
    summary = embed_shard(store, shard["tar"], shard["parquet"], spec, "emb")
    captions = _load(store, summary["parquet"].replace(".parquet", ".cap.npy"))
    assert captions.shape == (summary["rows"], 384)


def test_bad_models_are_clear_errors(small_pool, tiny_checkpoint, tmp_path):
    shard = small_pool["manifest"]["outputs"]["shards"][0]
    store = Store(str(tmp_path))
    with pytest.raises(InputError, match=r"nope\.pt: no such file"):
        embed_shard(store, shard["tar"], shard["parquet"], EmbedderSpec("Tiny-ViT-48px", str(tmp_path / "nope.pt")),
                    "emb")
    with pytest.raises(InputError, match="does not fit model 'ViT-S-32'"):
        embed_shard(store, shard["tar"], shard["parquet"], EmbedderSpec("ViT-S-32", tiny_checkpoint), "emb")
    with pytest.raises(InputError, match="'No-Such' : not an open_clip model|model 'No-Such'"):
        embed_shard(store, shard["tar"], shard["parquet"], EmbedderSpec("No-Such", tiny_checkpoint), "emb")
    assert not store.exists("emb")


def test_batched_perceptual_hashes_equal_imagehash():
    import imagehash
    import numpy as np
    from PIL import Image

    from tasks.embed.run import perceptual_hashes

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, size=(int(h), int(w), 3), dtype=np.uint8))
              for h, w in rng.integers(20, 200, size=(12, 2))]
    images.insert(3, None)
    expected = [int(np.packbits(imagehash.phash(image).hash.flatten()).view(">u8")[0].astype(np.int64))
                if image is not None else 0 for image in images]
    assert perceptual_hashes(images).tolist() == expected
