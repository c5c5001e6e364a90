"""Embed one downloaded shard and write its row-aligned outputs to the store; then the stage's manifest.

In:  the store, a shard of the pool (:class:`~tasks.common.catalog.ShardRecord`: its ``.tar`` and
     img2dataset ``.parquet``), an :class:`~tasks.embed.spec.EmbedderSpec` and the files the
     catalog gives the shard's embeddings (:meth:`~tasks.common.catalog.Catalog.embedded_shard`).
Out: ``.img.npy`` and ``.txt.npy`` (float16, L2-normalised, one row per successful sample in tar
     order), ``.cap.npy`` when a caption model is set, and, written last so that its presence marks
     the shard done, the shard's table (``.parquet``): ``uid``, ``key``, ``text``, ``clip_score``
     (image-text cosine), ``embed_ok`` and ``embed_reason`` (``undecodable``,
     ``non_finite_embedding``), ``phash`` (64-bit perceptual hash of the grey levels, as a signed
     int64), ``thumb`` (the image as 8 x 8 RGB bytes, a colour check for pHash matches), ``sha256``
     of the downloaded bytes, and the image sizes. A sample that cannot be embedded keeps its row,
     with a zero embedding and its reason; nothing is dropped here. :func:`embedding_manifest`:
     the stage's manifest over every shard of the pool, written last in the embedding folder.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pandas as pd
import scipy.fftpack
from PIL import Image

from tasks.common.catalog import Catalog, EmbeddedShard, PoolRecord, ShardRecord
from tasks.common.hashing import code_version
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.embed.shards import read_shard
from tasks.embed.spec import EmbedderSpec, caption_model_path

EMBED_VERSION = 3  # bump when a change alters what a shard's outputs hold
_EMBEDDERS: dict = {}


def stage_code_version() -> str:
    return code_version("embed", EMBED_VERSION, ("open_clip_torch", "torch"))


def get_embedder(spec: EmbedderSpec, storage_options: dict | None = None):
    """The loaded models for ``spec``, once per process (a Dask worker keeps them between shards)."""
    if spec not in _EMBEDDERS:
        import torch

        from tasks.evaluate.model import ClipEmbedder

        try:
            from distributed import get_worker

            torch.set_num_threads(max(1, get_worker().state.nthreads))
        except (ImportError, ValueError):
            pass
        clip = ClipEmbedder(spec.model, spec.checkpoint, batch_size=spec.batch_size, storage_options=storage_options)
        captions = None
        if spec.caption_model:
            from sentence_transformers import SentenceTransformer

            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            captions = SentenceTransformer(caption_model_path(spec.caption_model), device=clip.device)
        _EMBEDDERS[spec] = (clip, captions)
    return _EMBEDDERS[spec]


def _decode(data) -> Image.Image | None:
    if not isinstance(data, (bytes, bytearray)):
        return None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except Exception:  # noqa: BLE001 - any decoding failure is the same per-sample reason
        return None


def perceptual_hashes(images: list[Image.Image | None]) -> np.ndarray:
    """imagehash's pHash of every image as a signed int64 (0 for ``None``), the DCTs batched.

    Bit for bit ``imagehash.phash``: grey levels resized to 32 x 32 (Lanczos), a 2-D DCT, the top
    left 8 x 8 coefficients compared with their median; one DCT call for the whole shard instead
    of two per image (0.25 ms per image instead of 0.77).
    """
    grey = np.zeros((len(images), 32, 32), dtype=np.float64)
    for row, image in enumerate(images):
        if image is not None:
            grey[row] = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS))
    low = scipy.fftpack.dct(scipy.fftpack.dct(grey, axis=1), axis=2)[:, :8, :8].reshape(len(images), 64)
    bits = low > np.median(low, axis=1, keepdims=True)
    hashes = np.packbits(bits, axis=1).view(">u8")[:, 0].astype(np.int64)
    hashes[[image is None for image in images]] = 0
    return hashes


def _thumbnail(image: Image.Image) -> bytes:
    return np.asarray(image.resize((8, 8), Image.BILINEAR), dtype=np.uint8).tobytes()


def embed_shard(store: Store, shard: ShardRecord, spec: EmbedderSpec, files: EmbeddedShard) -> dict:
    """Embed the shard unless its outputs exist; return its files (relative) and counts (rows, embedded, reasons)."""
    marker = files.parquet
    if store.exists(marker):
        with store.open(marker) as handle:
            done = pd.read_parquet(handle, columns=["embed_ok", "embed_reason"])
        return _summary(files, done)
    samples = read_shard(shard.tar, shard.parquet, store.fsspec_options(), recorded=shard.n_success or None)
    images = [_decode(b) for b in samples["bytes"]]
    ok = np.array([image is not None for image in images], dtype=bool)
    reason = np.where(ok, "", "undecodable").astype(object)
    clip, captions = get_embedder(spec, store.fsspec_options())
    texts = samples["text"].tolist()
    text_emb = clip.embed_texts(texts) if texts else np.zeros((0, 0), np.float32)
    dim = text_emb.shape[1] if len(texts) else 0
    image_emb = np.zeros((len(samples), dim), dtype=np.float32)
    if ok.any():
        image_emb[ok] = clip.embed_images([image for image in images if image is not None])
    finite = np.isfinite(image_emb).all(axis=1) & np.isfinite(text_emb).all(axis=1) if dim else ok
    bad = ok & ~finite
    reason[bad] = "non_finite_embedding"
    ok &= finite
    image_emb[~ok] = 0
    text_emb[~np.isfinite(text_emb).all(axis=1)] = 0
    clip_score = np.where(ok, (image_emb * text_emb).sum(axis=1), np.nan)

    store.write_npy(files.image_embeddings, image_emb.astype(np.float16))
    store.write_npy(files.text_embeddings, text_emb.astype(np.float16))
    if captions is not None:
        caption_emb = captions.encode(texts, batch_size=spec.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True) if texts else np.zeros((0, 0))
        store.write_npy(files.caption_embeddings, caption_emb.astype(np.float16))
    table = pd.DataFrame({
        "uid": samples["uid"], "key": samples["key"], "text": samples["text"],
        "clip_score": clip_score.astype(np.float32), "embed_ok": ok, "embed_reason": reason.astype(str),
        "phash": perceptual_hashes(images),
        "thumb": [_thumbnail(image) if image is not None else bytes(192) for image in images],
        "sha256": samples["sha256"],
        "width": [image.width if image is not None else 0 for image in images],
        "height": [image.height if image is not None else 0 for image in images],
        "original_width": samples["original_width"], "original_height": samples["original_height"],
    })
    store.write_bytes(marker, table.to_parquet(index=False))
    return _summary(files, table)


def _summary(files: EmbeddedShard, table: pd.DataFrame) -> dict:
    reasons = table.loc[~table["embed_ok"], "embed_reason"].value_counts().to_dict()
    return {**files.to_dict(), "rows": int(len(table)), "embedded": int(table["embed_ok"].sum()),
            "reasons": {k: int(v) for k, v in reasons.items()}}


def embedding_manifest(catalog: Catalog, pool: PoolRecord, spec: EmbedderSpec, folder: str,
                       shards: list[dict]) -> dict:
    """Publish the embedding run of ``pool`` in ``folder`` from its shards' summaries; return the manifest."""
    store = catalog.store
    entries = [EmbeddedShard(shard_id=s["shard_id"], parquet=store.uri(s["parquet"]),
                             image_embeddings=store.uri(s["image_embeddings"]),
                             text_embeddings=store.uri(s["text_embeddings"]),
                             caption_embeddings=store.uri(s["caption_embeddings"]) if s["caption_embeddings"] else None,
                             rows=s["rows"]).to_dict() for s in shards]
    manifest = Manifest(
        stage="embed", name=pool.name, store=store.root, config=spec.to_dict(), code_version=stage_code_version(),
        inputs={"pool_manifest": pool.content_hash},
        outputs={"folder": store.uri(folder), "shards": entries},
        rows={"samples": sum(s["rows"] for s in shards), "embedded": sum(s["embedded"] for s in shards)},
        stats={"not_embedded": {k: sum(s["reasons"].get(k, 0) for s in shards)
                                for k in sorted({r for s in shards for r in s["reasons"]})}},
    )
    return catalog.publish(folder, manifest, archive=True)


def embed_eval_sets(store: Store, spec: EmbedderSpec, tasklist: str, target: str) -> str:
    """Image embeddings of every evaluation image in the task list (for eval-set dedup); returns ``target``."""
    if store.exists(target):
        return target
    from tasks.evaluate.eval_sets import iter_samples, open_eval_set, read_tasklist

    clip, _ = get_embedder(spec, store.fsspec_options())
    images = [image for task in read_tasklist(tasklist, storage_options=store.options_for(tasklist))
              if task.type != "unsupported"
              for image, _ in iter_samples(open_eval_set(task))]
    embeddings = clip.embed_images(images) if images else np.zeros((0, 0), np.float32)
    store.write_npy(target, embeddings.astype(np.float16))
    return target
