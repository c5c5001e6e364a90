"""Damaged shards in the embedding stage: each one named and counted as failed, never read short.

Three img2dataset-like shards (tar, parquet): one whole, one cut inside a member (what a killed
copy leaves), one cut at a member boundary (a tar that reads cleanly, with fewer samples than its
parquet says). The stage's real task embeds them with a tiny open_clip model (random weights,
saved as a checkpoint file: nothing is downloaded), in a flow that collects the shards as
``embed_filter`` does.
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from prefect import flow

from tasks.common.catalog import Catalog
from tasks.common.errors import StageFailed
from tasks.common.prefect_support import artifact_key
from tasks.common.store import Store
from tasks.embed.spec import EmbedderSpec
from tasks.embed.task import embed_shard_task, embedded_shards

SAMPLES = 12


def write_shard(folder, name: str, seed: int) -> dict:
    """A downloaded shard: ``SAMPLES`` successes (jpg, txt, json) in the tar, one failure in the parquet only."""
    rng = np.random.default_rng(seed)
    keys = [f"{seed:04d}{i:05d}" for i in range(SAMPLES + 1)]
    meta = pd.DataFrame({"key": keys, "uid": [f"{seed:08d}{i:024x}" for i in range(SAMPLES + 1)],
                         "status": ["success"] * SAMPLES + ["failed_to_download"],
                         "sha256": [f"sha{i}" for i in range(SAMPLES + 1)], "width": 32, "height": 32,
                         "original_width": 32, "original_height": 32})
    tar_path = folder / f"{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for row in meta[meta["status"] == "success"].itertuples():
            image = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image, format="JPEG")
            for ext, data in (("jpg", image.getvalue()), ("txt", f"caption {row.key}".encode()),
                              ("json", json.dumps({"uid": row.uid, "key": row.key}).encode())):
                info = tarfile.TarInfo(f"{row.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    meta.to_parquet(folder / f"{name}.parquet", index=False)
    return {"shard_id": f"00000-{name}-00000", "tar": str(tar_path), "parquet": str(folder / f"{name}.parquet"),
            "n_rows": SAMPLES + 1, "n_success": SAMPLES, "content_hash": name * 4}


def cut_inside_a_member(shard: dict) -> None:
    with tarfile.open(shard["tar"]) as tar:
        member = tar.getmembers()[3 * 5]  # the jpg of the 6th sample
    data = open(shard["tar"], "rb").read()
    open(shard["tar"], "wb").write(data[:member.offset_data + member.size // 2])


def cut_at_a_member_boundary(shard: dict, samples: int) -> None:
    """Keep the first ``samples`` samples whole, and nothing after them (no end-of-archive blocks)."""
    with tarfile.open(shard["tar"]) as tar:
        last = tar.getmembers()[3 * samples - 1]
    data = open(shard["tar"], "rb").read()
    open(shard["tar"], "wb").write(data[:last.offset_data + -(-last.size // 512) * 512])


@pytest.fixture(scope="module")
def tiny_random_checkpoint(tmp_path_factory) -> str:
    import open_clip
    import torch

    from tasks.common.models import register_model_configs

    register_model_configs()
    path = tmp_path_factory.mktemp("model") / "tiny-random.pt"
    torch.save(open_clip.create_model("Tiny-ViT-48px").state_dict(), path)
    return str(path)


@flow(name="embed_shards_for_test")
def embed_shards(store: Store, shards: list[dict], spec: dict, folder: str) -> list[dict]:
    """The embedding part of ``embed_filter``: one task per shard, then every shard collected."""
    embed = embed_shard_task.with_options(retries=0)  # a damaged shard fails the same way on every try
    futures = [embed.submit(store, shard, spec, folder) for shard in shards]
    return embedded_shards(futures, shards, store, "damaged")


def test_damaged_shards_are_named_and_counted_and_the_others_kept(prefect_harness, tiny_random_checkpoint, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    shards = [write_shard(tmp_path, name, seed) for seed, name in enumerate(["whole", "cutmember", "cutboundary"])]
    cut_inside_a_member(shards[1])
    cut_at_a_member_boundary(shards[2], samples=7)
    store = Store(str(tmp_path / "store"))
    spec = EmbedderSpec("Tiny-ViT-48px", tiny_random_checkpoint, batch_size=16).to_dict()

    with pytest.raises(StageFailed) as refused:
        embed_shards(store, shards, spec, "emb")
    message = str(refused.value)
    assert message.startswith("embedding: 2 of 3 shards failed (")
    assert f"shard 00000-cutmember-00000: StageFailed: shard {shards[1]['tar']}: truncated inside a member" in message
    assert (f"shard 00000-cutboundary-00000: StageFailed: shard {shards[2]['tar']}: holds 7 samples but "
            f"{SAMPLES} were recorded for it") in message
    assert "the 1 others are embedded and kept" in message and "whole" not in message

    # the whole shard is embedded in full; the damaged ones have no outputs at all, so none is read short
    files = {s["shard_id"]: Catalog.embedded_shard("emb", s["shard_id"]) for s in shards}
    table = pd.read_parquet(store.path(files["00000-whole-00000"].parquet))
    assert len(table) == SAMPLES and table["embed_ok"].all()
    for damaged in ("00000-cutmember-00000", "00000-cutboundary-00000"):
        assert not store.exists(files[damaged].parquet) and not store.exists(files[damaged].image_embeddings)

    with get_client(sync_client=True) as client:  # the stage's report: one row per failed shard
        key = artifact_key(store, "damaged", "embed", "failed-shards")
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    assert len(artifacts) == 1 and "2 of 3 shards failed" in artifacts[0].description
    rows = artifacts[0].data if isinstance(artifacts[0].data, list) else json.loads(artifacts[0].data)
    assert [row["shard_id"] for row in rows] == ["00000-cutmember-00000", "00000-cutboundary-00000"]


def test_a_table_listing_other_successes_than_recorded_is_refused(tmp_path):
    """The parquet next to a tar was replaced after the pool was published: refused before reading the tar."""
    from tasks.embed.shards import read_shard

    shard = write_shard(tmp_path, "replaced", 5)
    with pytest.raises(StageFailed, match=rf"shard {shard['tar']}: its table .*replaced\.parquet lists {SAMPLES} "
                                          rf"successful samples but {SAMPLES + 3} were recorded"):
        read_shard(shard["tar"], shard["parquet"], recorded=SAMPLES + 3)
    assert len(read_shard(shard["tar"], shard["parquet"], recorded=SAMPLES)) == SAMPLES
