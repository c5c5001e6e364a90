"""Synthetic pools that arrive already embedded, in DataComp's and in clip-retrieval's layout.

    from benchmarks.synthetic_sources import make_datacomp_pool, make_clip_retrieval_pool
    make_datacomp_pool("/tmp/dc", shards=4, rows_per_shard=250_000, seed=0)          # 1M rows
    make_clip_retrieval_pool("s3://bucket/cr", shards=2, rows_per_shard=1000, seed=1, dim=64)

In:  a folder (local path or any fsspec URI, with ``storage_options``), a number of shards, rows
     per shard, a seed and the embedding widths (small ones for tests).
Out: the files the import stage (:mod:`tasks.pool_import`) reads, and a small description
     (``{"files": [...], "rows": n, "uids": first shard's uids}``):

- :func:`make_datacomp_pool`: DataComp's released metadata, per shard ``<NNNNNNNN>.parquet``
  (``uid``, ``url``, ``text``, ``original_width``, ``original_height``,
  ``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ``face_bboxes``, ``sha256``) and the
  row-aligned ``<NNNNNNNN>.npz`` with float16 ``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``
  (L2-normalised; each score is the cosine of its pair of embeddings, as DataComp's are).
- :func:`make_clip_retrieval_pool`: clip-retrieval's inference output, per shard
  ``img_emb/img_emb_<n>.npy``, ``text_emb/text_emb_<n>.npy`` (float16, L2-normalised) and
  ``metadata/metadata_<n>.parquet`` (``caption``, ``url`` or ``image_path``, ``key``; optionally
  ``uid``, ``width``/``height``/``original_width``/``original_height`` and ``sha256``).

Content: ``n_concepts`` concepts, each a random unit centre and a name of one or two English
words (``"red car"``, ``"dog"``: :data:`CONCEPT_WORDS` lists them, so MetaCLIP metadata built from
them matches); a sample's caption is an English template around its concept's name, its image
and text embeddings the centre plus noise, normalised. ``exact_duplicates`` (a fraction) copies
other samples' sha256 within a shard. Everything is vectorised over a shard; one shard is in
memory at a time (a 250,000-row DataComp shard at 768 + 512 dimensions takes about 2.6 GB).
"""

from __future__ import annotations

import io
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

CONCEPT_WORDS = ("dog", "cat", "red car", "blue bird", "mountain lake", "city street", "green apple", "wooden chair",
                 "old bridge", "sailing boat", "coffee cup", "yellow flower", "snowy forest", "white horse",
                 "desert road", "night sky")
TEMPLATES = ("a photo of a {}", "a close up picture of a {} in the garden", "the {} on a sunny day",
             "an image showing a {} next to the house", "my favourite {} from the trip")
_HEX = np.array([f"{i:02x}" for i in range(256)])


def hex_strings(rng: np.random.Generator, n: int, n_bytes: int) -> np.ndarray:
    """``n`` random lower-case hex strings of ``n_bytes`` bytes (vectorised: a lookup table, one view)."""
    pairs = np.ascontiguousarray(_HEX[rng.integers(0, 256, size=(n, n_bytes), dtype=np.uint8)])
    return pairs.view(f"<U{2 * n_bytes}")[:, 0].astype(object) if n else np.zeros(0, dtype=object)


def _unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _concepts(seed: int, n_concepts: int, dims: dict[str, int]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, 1])
    return {name: _unit(rng.normal(size=(n_concepts, dim))) for name, dim in dims.items()}


def _samples(seed: int, number: int, rows: int, n_concepts: int, centres: dict[str, np.ndarray],
             noise: float, exact_duplicates: float) -> dict[str, Any]:
    """One shard's columns and embeddings (``<name>_img`` / ``<name>_txt`` per embedding width)."""
    rng = np.random.default_rng([seed, 2, number])
    concept = rng.integers(0, n_concepts, size=rows)
    words = np.array(CONCEPT_WORDS, dtype=object)[concept % len(CONCEPT_WORDS)]
    template = rng.integers(0, len(TEMPLATES), size=rows)
    captions = np.empty(rows, dtype=object)
    for index, text in enumerate(TEMPLATES):  # one vectorised format per template, not per sample
        chosen = template == index
        head, tail = text.split("{}")
        captions[chosen] = head + words[chosen] + tail
    sha256 = hex_strings(rng, rows, 32)
    n_copies = int(round(exact_duplicates * rows))
    if n_copies:
        copies = rng.choice(rows, size=2 * n_copies, replace=False)
        sha256[copies[:n_copies]] = sha256[copies[n_copies:]]
    out: dict[str, Any] = {
        "uid": hex_strings(rng, rows, 16), "caption": captions, "concept": concept,
        "url": "https://example.com/" + np.char.mod("%d", number * 10 ** 9 + np.arange(rows)).astype(object) + ".jpg",
        "original_width": rng.integers(64, 1024, size=rows), "original_height": rng.integers(64, 1024, size=rows),
        "sha256": sha256,
    }
    for name, centre in centres.items():
        base = centre[concept]
        image = _unit(base + noise * rng.normal(size=base.shape) / np.sqrt(base.shape[1]))
        text = _unit(base + noise * rng.normal(size=base.shape) / np.sqrt(base.shape[1]))
        out[f"{name}_img"], out[f"{name}_txt"] = image.astype(np.float16), text.astype(np.float16)
        cosine = (out[f"{name}_img"].astype(np.float32) * out[f"{name}_txt"].astype(np.float32)).sum(axis=1)
        out[f"{name}_score"] = cosine.astype(np.float64)
    return out


def _write(fs, path: str, data: bytes) -> str:
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)
    return path


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def make_datacomp_pool(folder: str, shards: int, rows_per_shard: int, seed: int = 0, dim_l14: int = 768,
                       dim_b32: int = 512, n_concepts: int = 16, noise: float = 0.6, exact_duplicates: float = 0.0,
                       storage_options: dict | None = None) -> dict:
    """DataComp's metadata layout in ``folder``: ``<NNNNNNNN>.parquet`` and ``.npz`` per shard."""
    fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    centres = _concepts(seed, n_concepts, {"l14": dim_l14, "b32": dim_b32})
    files, first = [], None
    for number in range(shards):
        s = _samples(seed, number, rows_per_shard, n_concepts, centres, noise, exact_duplicates)
        first = s["uid"] if first is None else first
        empty_boxes = pa.ListArray.from_arrays(pa.array(np.zeros(rows_per_shard + 1, dtype=np.int32)),
                                               pa.array([], type=pa.list_(pa.float64())))
        table = pa.table({"uid": pa.array(s["uid"], pa.string()), "url": pa.array(s["url"], pa.string()),
                          "text": pa.array(s["caption"], pa.string()),
                          "original_width": s["original_width"], "original_height": s["original_height"],
                          "clip_b32_similarity_score": s["b32_score"], "clip_l14_similarity_score": s["l14_score"],
                          "face_bboxes": empty_boxes, "sha256": pa.array(s["sha256"], pa.string())})
        arrays = io.BytesIO()
        np.savez(arrays, b32_img=s["b32_img"], b32_txt=s["b32_txt"], l14_img=s["l14_img"], l14_txt=s["l14_txt"])
        files.append(_write(fs, f"{root}/{number:08d}.parquet", _parquet(table)))
        files.append(_write(fs, f"{root}/{number:08d}.npz", arrays.getvalue()))
    return {"files": files, "rows": shards * rows_per_shard, "uids": first}


def make_clip_retrieval_pool(folder: str, shards: int, rows_per_shard: int, seed: int = 0, dim: int = 512,
                             n_concepts: int = 16, noise: float = 0.6, path_column: str = "url",
                             with_uid: bool = False, with_sizes: bool = False, with_sha256: bool = False,
                             exact_duplicates: float = 0.0, storage_options: dict | None = None) -> dict:
    """clip-retrieval's inference output in ``folder``: ``img_emb/``, ``text_emb/`` and ``metadata/`` per shard.

    ``path_column``: ``"url"`` (a webdataset read with its metadata) or ``"image_path"`` (a folder
    of files). Numbers are written without padding (``img_emb_0.npy`` ... ``img_emb_10.npy``), as
    clip-retrieval does for fewer than 10 partitions, so readers must sort them as numbers.
    """
    fs, root = fsspec.core.url_to_fs(folder, **(storage_options or {}))
    centres = _concepts(seed, n_concepts, {"clip": dim})
    files, first = [], None
    for number in range(shards):
        s = _samples(seed, number, rows_per_shard, n_concepts, centres, noise, exact_duplicates)
        first = s["uid"] if first is None else first
        columns: dict[str, Any] = {path_column: pa.array(s["url"], pa.string()),
                                   "caption": pa.array(s["caption"], pa.string()),
                                   "key": pa.array(np.char.mod("%09d", number * 10 ** 4 + np.arange(rows_per_shard))
                                                   .astype(object), pa.string())}
        if with_uid:
            columns["uid"] = pa.array(s["uid"], pa.string())
        if with_sizes:
            columns.update(width=np.minimum(s["original_width"], 256), height=np.minimum(s["original_height"], 256),
                           original_width=s["original_width"], original_height=s["original_height"])
        if with_sha256:
            columns["sha256"] = pa.array(s["sha256"], pa.string())
        files.append(_write(fs, f"{root}/img_emb/img_emb_{number}.npy", _npy(s["clip_img"])))
        files.append(_write(fs, f"{root}/text_emb/text_emb_{number}.npy", _npy(s["clip_txt"])))
        files.append(_write(fs, f"{root}/metadata/metadata_{number}.parquet", _parquet(pa.table(columns))))
    return {"files": files, "rows": shards * rows_per_shard, "uids": first}


def minted_uids(paths: pd.Series, captions: pd.Series) -> np.ndarray:
    """The uids the importer mints for clip-retrieval rows without one (md5 of path, tab, caption)."""
    from tasks.pool_import.sources import mint_uids

    return mint_uids(paths, captions)
