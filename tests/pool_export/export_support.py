"""A small downloaded, embedded and filtered pool written into a store the way the stages write it."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import numpy as np
import pandas as pd

from tasks.common.catalog import Catalog, shard_id
from tasks.common.manifest import Manifest
from tasks.common.store import Store

DIM = 8


def _tar(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for row in frame.itertuples():
            for ext, data in (("jpg", f"image {row.uid}".encode()), ("txt", row.caption.encode()),
                              ("json", json.dumps({"uid": row.uid, "key": row.key}).encode())):
                info = tarfile.TarInfo(f"{row.key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_embedded_pool(store: Store, pool: str = "test", slices: tuple[int, ...] = (2, 2), rows: int = 12,
                        seed: int = 0, imported: bool = False) -> dict:
    """Download slices of ``slices[i]`` shards each (img2dataset's numbering restarts at 00000 in each
    slice), each shard ``rows`` rows: one failed download, one undecodable image (``embed_ok`` false);
    shard 1 of slice 0 holds no sample at all. Embeddings and a filter run are published as the
    pool's latest. ``imported``: the pool has no tars (as an import makes it).

    Returns the manifests and, per exported shard in pool order, the expected rows.
    """
    catalog = Catalog(store)
    rng = np.random.default_rng(seed)
    shards, embedded, decisions, expected = [], [], {}, []
    embeddings_folder = catalog.embedding_folder(pool, "test-embedder")
    filters_folder = catalog.filter_folder(pool, f"{seed:016x}")
    for index, n_shards in enumerate(slices):
        key = f"{index:02d}{seed:014x}"
        folder = catalog.slice_folder(pool, index, key)
        for number in range(n_shards):
            ident = shard_id(index, key, number)
            uids = [f"{index:04x}{number:04x}{i:08x}{seed:016x}" for i in range(rows)]
            frame = pd.DataFrame({
                "uid": uids, "key": [f"{number:05d}{i:04d}" for i in range(rows)],
                "url": [f"http://127.0.0.1/{u}.jpg" for u in uids], "caption": [f"a photo number {i}" for i in range(rows)],
                "status": "success", "error_message": None,
                "sha256": [hashlib.sha256(u.encode()).hexdigest() for u in uids],
                "width": 64, "height": 48, "original_width": rng.integers(50, 500, rows),
                "original_height": rng.integers(50, 500, rows)})
            frame.loc[rows - 1, ["status", "error_message"]] = ["failed_to_download", "http 404"]
            if index == 0 and number == 1:
                frame["status"], frame["error_message"] = "failed_to_download", "timeout"
            frame = frame.sample(frac=1.0, random_state=int(rng.integers(1 << 30))).reset_index(drop=True)
            success = frame[frame["status"] == "success"].sort_values("key").reset_index(drop=True)
            tar = None if imported else store.write_bytes(f"{folder}/{number:05d}.tar", _tar(success))
            table = store.write_bytes(catalog.imported_shard_table(pool, ident) if imported
                                      else f"{folder}/{number:05d}.parquet", frame.to_parquet(index=False))
            shards.append({"shard_id": ident, "tar": tar, "parquet": table, "n_rows": rows,
                           "n_success": len(success), "content_hash": hashlib.sha256(table.encode()).hexdigest()})
            if not len(success):
                continue
            ok = np.ones(len(success), dtype=bool)
            ok[len(success) // 2] = False
            image = rng.normal(size=(len(success), DIM)).astype(np.float16)
            text = rng.normal(size=(len(success), DIM)).astype(np.float16)
            image[~ok] = 0
            score = np.where(ok, rng.random(len(success)), np.nan).astype(np.float32)
            files = catalog.embedded_shard(embeddings_folder, ident)
            store.write_npy(files.image_embeddings, image)
            store.write_npy(files.text_embeddings, text)
            embedding_table = pd.DataFrame({
                "uid": success["uid"], "key": success["key"], "text": success["caption"], "clip_score": score,
                "embed_ok": ok, "embed_reason": np.where(ok, "", "undecodable"), "sha256": success["sha256"],
                "original_width": success["original_width"], "original_height": success["original_height"]})
            store.write_bytes(files.parquet, embedding_table.to_parquet(index=False))
            embedded.append({**{k: store.uri(v) for k, v in files.to_dict().items() if isinstance(v, str) and k != "shard_id"},
                             "shard_id": ident, "caption_embeddings": None, "rows": len(success)})
            decisions[ident] = store.write_bytes(catalog.filter_decisions(filters_folder, ident), pd.DataFrame(
                {"uid": success["uid"], "keep": ok}).to_parquet(index=False))
            expected.append({"shard_id": ident, "table": embedding_table, "url": success["url"].to_numpy(),
                             "image": image, "text": text, "ok": ok, "tar": tar, "n_success": len(success)})
    pool_manifest = catalog.publish_pool(Manifest(
        stage="import" if imported else "download", name=pool, store=store.root, config={}, code_version="test",
        outputs={"folder": store.uri(catalog.pool_folder(pool)), "shards": shards}))
    embeddings = catalog.publish(embeddings_folder, Manifest(
        stage="import" if imported else "embed", name=pool, store=store.root, config={}, code_version="test",
        inputs={"pool_manifest": pool_manifest["content_hash"]},
        outputs={"folder": store.uri(embeddings_folder), "shards": embedded}), archive=True)
    filters = catalog.publish(filters_folder, Manifest(
        stage="filter", name=pool, store=store.root, config={}, code_version="test",
        inputs={"embeddings": embeddings["content_hash"]},
        outputs={"folder": store.uri(filters_folder), "decisions": decisions}))
    catalog.set_latest_runs(pool, embeddings, filters)
    return {"pool": pool_manifest, "embeddings": embeddings, "filters": filters, "expected": expected}
