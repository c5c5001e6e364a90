"""Import a pool that arrives embedded (DataComp metadata, clip-retrieval output) into the store.

In:  the catalog, a pool name, a source folder (local or fsspec URI; read with the store's
     options when it lives on the store's kind of filesystem, :meth:`Store.options_for`), its
     format (``auto``, ``datacomp``, ``clip_retrieval``: :mod:`tasks.pool_import.sources`) and,
     for DataComp, which embeddings to take (``l14``, the default, or ``b32``).
Out, through the catalog's paths only, the records a downloaded and embedded pool has, so every
later stage (filters, tree, subsets) runs on it unchanged:

- per source shard (its ``shard_id`` is ``shard_id(0, <its content hash>, 0)``: its content alone names
  it, so a source that grows keeps the ids, and the imported files, of the shards it had):
  the pool's record of it, :meth:`~tasks.common.catalog.Catalog.imported_shard_table`, in
  img2dataset's columns (``uid``, ``key``, ``url``, ``caption``, ``status`` = ``success``,
  ``error_message``, ``width``, ``height``, ``original_width``, ``original_height``, ``sha256``, and
  the source's scores under their own names); and its embeddings,
  :meth:`~tasks.common.catalog.Catalog.embedded_shard`: ``.img.npy`` and ``.txt.npy`` (float16,
  L2-normalised) and, LAST (its presence marks the shard done), the shard's table with exactly the
  embed stage's columns (:mod:`tasks.embed.run`) plus ``clip_b32_score`` / ``clip_l14_score``
  (float32) when the source has them. ``clip_score`` is the source's score of the chosen
  embeddings (DataComp: ``clip_l14_similarity_score`` for ``l14``) or, for clip-retrieval, the
  image-text cosine of the stored embeddings; ``embed_ok`` is true and ``embed_reason`` empty;
  ``phash`` is 0 and ``thumb`` 192 zero bytes (no pixels: the filters skip pHash dedup on such
  a pool, :attr:`~tasks.common.catalog.EmbeddingRun.has_image_bytes`); sizes and ``sha256`` the
  source lacks are null.
- last, the embedding run's manifest (stage ``import``, archived, in
  ``catalog.embedding_folder(pool, key)``, the key hashing the format, the embeddings, every
  shard's content hash and :data:`IMPORT_VERSION`), then the pool's manifest (stage ``import``,
  shards with ``tar: None``), the embedding manifest's ``inputs.pool_manifest`` being its hash.

Why copy instead of reading the source in place: every stage addresses shards by store paths
and ids (one catalog owns the layout), outputs are checked against manifests (a manifest whose
files are gone is redone), the filters and the tree slice ``.npy`` rows without loading a whole
npz, and a source folder may change or vanish after the import while the pool must not.

Embeddings are checked, not trusted: a row whose L2 norm is off 1 by more than
:data:`NORM_TOLERANCE` (DataComp's and clip-retrieval's are normalised, float16 rounding moves
norms by about 1e-3) is renormalised and counted in the manifest's ``renormalised``; rows within it
are stored bit for bit as given; a zero or non-finite row is an error.

Checks (an :class:`~tasks.common.errors.InputError` naming the file, key or column, always before
any manifest is published, so nothing is half-visible): :func:`plan_import`, before anything is
written, pairs every shard's files and reads every header (columns, embedding keys, rows aligned
with the metadata, the same dimension in every shard, an empty source, the format and embeddings
chosen); :func:`check_uids`, still before anything is written, reads every shard's uids on the Dask
workers and shuffles them by hash (:mod:`tasks.common.shuffle`), so no process holds all uids:
uids that are not 32 lower-case hex characters and duplicates within or across shards;
:func:`import_shard` checks its own content (rows aligned, NaN scores or embeddings).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common.catalog import Catalog, EmbeddedShard, ShardRecord, check_name, shard_id
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.shuffle import compute, hash_partition, partitions_for, shuffle, split_frame
from tasks.common.store import Store
from tasks.pool_import.sources import (CARRIED_SCORES, DATACOMP_SCORES, FACE_BOXES, SIZE_COLUMNS, SourceShard, bad_uids,
                                       check_choice, check_header, list_source, mint_uids, read_headers,
                                       read_shard_data, shard_uids)

IMPORT_VERSION = 1  # bump when a change alters what an imported shard's files hold
NORM_TOLERANCE = 1e-2
NORM_CHUNK_ROWS = 16_384
UID_ROWS_PER_PARTITION = 2_000_000
EMBED_COLUMNS = ["uid", "key", "text", "clip_score", "embed_ok", "embed_reason", "phash", "thumb", "sha256", "width",
                 "height", "original_width", "original_height"]
SCORE_COLUMNS = ["clip_b32_score", "clip_l14_score"]
THUMB_BYTES = 192
RENORMALISED = b"renormalised_rows"  # kept in the shard table's schema metadata: a finished shard's summary


def stage_code_version() -> str:
    return code_version("import", IMPORT_VERSION)


# ----- plan ---------------------------------------------------------------------------------------
def plan_import(catalog: Catalog, pool_name: str, source: str, format: str = "auto", embeddings: str = "l14") -> dict:
    """Every cheap check over every shard, before anything is written; returns the plan (a JSON dict).

    The plan: the pool, the format, the source, the chosen embeddings (``None`` for clip-retrieval,
    which holds one pair), the dimension, the embedding folder, the source's content hash and per
    shard its source files, ``shard_id``, content hash and rows.
    """
    check_name(pool_name, "pool_name")
    check_choice(format, embeddings)
    store = catalog.store
    store.check_writable()
    options = store.options_for(source)
    format, shards = list_source(source, format, options)
    headers = read_headers(source, format, shards, options)
    dims = [check_header(format, embeddings, shard, header) for shard, header in zip(shards, headers)]
    for shard, dim in zip(shards, dims):
        if dim != dims[0]:
            raise InputError(f"{shard.image}: embeddings of dimension {dim}, but {shards[0].image} has {dims[0]}; "
                             "every shard of a pool must hold the same embeddings")
    chosen = embeddings if format == "datacomp" else None
    hashes = [header.content_hash for header in headers]
    source_hash = hash_json(hashes)
    # one folder per pool, format, embeddings and code version, shared by every version of the source (as an
    # embedder's folder is): shard ids carry their content hash, so a grown source imports only its new shards
    key = hash_json({"format": format, "embeddings": chosen, "code": stage_code_version()})
    return {"pool": pool_name, "format": format, "source": source, "embeddings": chosen, "dim": int(dims[0]),
            "folder": catalog.embedding_folder(pool_name, key[:16]), "source_hash": source_hash,
            "shards": [{"source": shard.to_dict(), "shard_id": shard_id(0, header.content_hash[:16], 0),
                        "content_hash": header.content_hash, "rows": header.rows,
                        "columns": header.columns} for shard, header in zip(shards, headers)]}


# ----- uids, pool-wide ------------------------------------------------------------------------------
def _uid_pieces(item: tuple[dict, int], store: Store, format: str, n_partitions: int) -> tuple:
    """One source shard's uids (read, or minted), checked, split by uid hash: ``uid``, ``shard``, ``row``."""
    source, number = item
    shard = SourceShard(**source)
    uids = shard_uids(format, shard, store.options_for(shard.table))
    bad = bad_uids(uids)
    if len(bad):
        raise InputError(f"{shard.table}: uid {uids[bad[0]]!r} (row {int(bad[0])}) is not 32 lower-case hex "
                         f"characters ({len(bad)} such rows in this file)")
    frame = pd.DataFrame({"uid": uids.astype(str), "shard": np.full(len(uids), number, dtype=np.int64),
                          "row": np.arange(len(uids), dtype=np.int64)})
    return split_frame(frame, hash_partition(frame["uid"].to_numpy(), n_partitions), n_partitions)


def _duplicates(*pieces: pd.DataFrame, limit: int = 20) -> tuple[int, pd.DataFrame]:
    """One partition's duplicated uids: how many rows, and the first few of them (all their copies)."""
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=["uid", "shard", "row"])
    repeated = rows[rows["uid"].duplicated(keep=False)].sort_values(["uid", "shard", "row"])
    first = repeated["uid"].drop_duplicates().head(limit)
    return int(len(repeated)), repeated[repeated["uid"].isin(first)]


def check_uids(store: Store, plan: dict, client=None) -> dict:
    """Every uid well-formed and unique in the whole source; a shuffle by uid hash on the workers.

    Returns ``{"samples": n}``; raises an InputError naming the uid and the files (and rows) that
    hold it. A process holds at most one source shard's uids and one partition's.
    """
    import dask

    rows = sum(s["rows"] for s in plan["shards"])
    n = partitions_for(rows, UID_ROWS_PER_PARTITION)
    inputs = [s["source"] for s in plan["shards"]]
    pieces = shuffle(list(zip(inputs, range(len(inputs)))), _uid_pieces, n, store, plan["format"], n)
    found = compute(client, [dask.delayed(_duplicates, pure=True)(*partition) for partition in pieces])
    total = sum(count for count, _ in found)
    if total:
        example = pd.concat([frame for _, frame in found if len(frame)], ignore_index=True)
        uid = example["uid"].iloc[0]
        where = example[example["uid"] == uid]
        places = ", ".join(f"{inputs[int(s)]['table']} row {int(r)}" for s, r in zip(where["shard"], where["row"]))
        raise InputError(f"source {plan['source']}: uid {uid} appears more than once ({places}); "
                         f"{total} rows share their uid with another row in all")
    return {"samples": int(rows)}


# ----- one shard ------------------------------------------------------------------------------------
def _sizes(frame: pd.DataFrame, name: str) -> pa.Array:
    if name not in frame:
        return pa.nulls(len(frame), pa.int64())
    values = pd.to_numeric(frame[name], errors="coerce")
    missing = values.isna().to_numpy()
    return pa.array(values.fillna(0).to_numpy(dtype=np.int64), type=pa.int64(), mask=missing)


def _strings(frame: pd.DataFrame, name: str) -> pa.Array:
    if name not in frame:
        return pa.nulls(len(frame), pa.string())
    values = frame[name]
    return pa.array(values.where(values.notna(), None).astype(object).to_numpy(), type=pa.string())


def zero_thumbnails(rows: int) -> pa.Array:
    """``rows`` thumbnails of 192 zero bytes (no pixels), as the embed stage's binary column."""
    offsets = pa.py_buffer((np.arange(rows + 1, dtype=np.int32) * THUMB_BYTES).tobytes())
    return pa.Array.from_buffers(pa.binary(), rows, [None, offsets, pa.py_buffer(bytes(rows * THUMB_BYTES))])


def normalised(matrix: np.ndarray, where: str) -> tuple[np.ndarray, int]:
    """``matrix`` as float16 with unit rows: rows within NORM_TOLERANCE kept as given, others rescaled.

    Norms are taken in float32 over chunks of rows (no float32 copy of the whole shard); a float16
    source is kept as it is where its rows are unit-norm. A NaN or infinite value makes its row's
    norm non-finite (squares of finite float16 values cannot overflow float32).
    """
    norms = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), NORM_CHUNK_ROWS):
        chunk = matrix[start:start + NORM_CHUNK_ROWS].astype(np.float32)
        norms[start:start + len(chunk)] = np.sqrt(np.einsum("ij,ij->i", chunk, chunk))
    finite = np.isfinite(norms)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise InputError(f"{where}: row {row} holds NaN or infinite values ({int((~finite).sum())} such rows)")
    if (norms == 0).any():
        row = int(np.flatnonzero(norms == 0)[0])
        raise InputError(f"{where}: row {row} is all zeros ({int((norms == 0).sum())} such rows); it cannot be "
                         "normalised")
    off = np.abs(norms - 1) > NORM_TOLERANCE
    out = matrix.astype(np.float16, copy=False)
    if off.any():
        out = out.copy() if out is matrix else out
        out[off] = (matrix[off].astype(np.float32) / norms[off, None]).astype(np.float16)
    return out, int(off.sum())


def shard_tables(plan: dict, shard: dict, frame: pd.DataFrame, image: np.ndarray,
                 text: np.ndarray) -> tuple[pa.Table, pa.Table]:
    """The pool's table (img2dataset's columns) and the embed stage's table of one checked shard."""
    rows = len(frame)
    if plan["format"] == "datacomp":
        uids, captions, url = frame["uid"].to_numpy(dtype=object), frame["text"], frame["url"]
        score = frame[DATACOMP_SCORES[plan["embeddings"]]].to_numpy(dtype=np.float32)
        scores = {CARRIED_SCORES[c]: frame[c].to_numpy(dtype=np.float32) for c in scored_columns(plan, frame)}
    else:
        path = "url" if "url" in frame else "image_path" if "image_path" in frame else None
        captions = frame["caption"]
        uids = (frame["uid"].to_numpy(dtype=object) if "uid" in frame
                else mint_uids(frame[path], captions))
        url = frame[path] if path else pd.Series([None] * rows)
        score = (image.astype(np.float32) * text.astype(np.float32)).sum(axis=1)
        scores = {}
    keys = frame["key"].astype(str).to_numpy(dtype=object) if "key" in frame else uids  # no key: the uid names it
    captions = captions.where(captions.notna(), "").astype(str)
    uid_array, key_array = pa.array(uids, pa.string()), pa.array(keys, pa.string())
    sizes = {name: _sizes(frame, name) for name in SIZE_COLUMNS}
    sha256 = _strings(frame, "sha256")
    pool = {"uid": uid_array, "key": key_array, "url": pa.array(url.where(url.notna(), None).astype(object), pa.string()),
            "caption": pa.array(captions.to_numpy(dtype=object), pa.string()),
            "status": pa.array(np.full(rows, "success", dtype=object), pa.string()),
            "error_message": pa.nulls(rows, pa.string()), **sizes, "sha256": sha256}
    if "image_path" in frame and "url" in frame:
        pool["image_path"] = _strings(frame, "image_path")
    if plan["format"] == "datacomp":
        pool.update({c: pa.array(frame[c].to_numpy(dtype=np.float64)) for c in CARRIED_SCORES})
        if FACE_BOXES in frame:  # DataComp's download blurs these faces: an export must give them back
            pool[FACE_BOXES] = pa.array(frame[FACE_BOXES], type=pa.list_(pa.list_(pa.float64())), from_pandas=True)
    embedded = {"uid": uid_array, "key": key_array, "text": pa.array(captions.to_numpy(dtype=object), pa.string()),
                "clip_score": pa.array(score.astype(np.float32)), "embed_ok": pa.array(np.ones(rows, dtype=bool)),
                "embed_reason": pa.array(np.full(rows, "", dtype=object), pa.string()),
                "phash": pa.array(np.zeros(rows, dtype=np.int64)), "thumb": zero_thumbnails(rows),
                "sha256": sha256, **sizes, **{name: pa.array(values) for name, values in scores.items()}}
    return pa.table(pool), pa.table(embedded)


def check_content(plan: dict, shard: dict, frame: pd.DataFrame, image: np.ndarray, text: np.ndarray) -> None:
    """The content checks of one read shard: rows aligned, dimension, NaN scores."""
    source = SourceShard(**shard["source"])
    for matrix, where in ((image, source.image), (text, source.text or source.image)):
        if matrix.ndim != 2 or len(matrix) != len(frame):
            raise InputError(f"{where}: embeddings of shape {list(matrix.shape)} for {len(frame)} rows of "
                             f"{source.table}; the embeddings must be row-aligned with the metadata")
        if matrix.shape[1] != plan["dim"]:
            raise InputError(f"{where}: embeddings of dimension {matrix.shape[1]}, the pool's are {plan['dim']}")
    if plan["format"] == "datacomp":
        chosen = DATACOMP_SCORES[plan["embeddings"]]
        for column in CARRIED_SCORES:
            values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if len(bad) and (column == chosen or len(bad) < len(values)):
                raise InputError(f"{source.table}: column {column!r} is NaN or missing in row {int(bad[0])} "
                                 f"({len(bad)} such rows)")


def scored_columns(plan: dict, frame: pd.DataFrame) -> list[str]:
    """The DataComp score columns a shard carries: the chosen embeddings' always, the other one unless it is
    null in every row (a pool exported by this project holds one model's score; the other column is null)."""
    chosen = DATACOMP_SCORES[plan["embeddings"]]
    return [column for column in CARRIED_SCORES
            if column == chosen or pd.to_numeric(frame[column], errors="coerce").notna().any()]


def import_shard(store: Store, plan: dict, shard: dict) -> dict:
    """Import one source shard unless its table is already in the store; returns its summary."""
    catalog = Catalog(store)
    files = catalog.embedded_shard(plan["folder"], shard["shard_id"])
    table_path = catalog.imported_shard_table(plan["pool"], shard["shard_id"])
    if store.exists(files.parquet):
        import pyarrow.parquet as pq

        with store.open(files.parquet) as handle:
            metadata = pq.read_schema(handle).metadata or {}
        return _summary(store, shard, files, table_path, shard["rows"], int(metadata.get(RENORMALISED, b"0")))
    source = SourceShard(**shard["source"])
    frame, image, text = read_shard_data(plan["format"], plan["embeddings"] or "", source,
                                         store.options_for(source.table))
    check_content(plan, shard, frame, image, text)
    image16, image_fixed = normalised(image, source.image if plan["format"] != "datacomp"
                                      else f"{source.image} array {plan['embeddings']}_img")
    text16, text_fixed = normalised(text, source.text if plan["format"] != "datacomp"
                                    else f"{source.image} array {plan['embeddings']}_txt")
    pool_table, embed_table = shard_tables(plan, shard, frame, image16, text16)
    renormalised = image_fixed + text_fixed
    embed_table = embed_table.replace_schema_metadata({RENORMALISED: str(renormalised).encode()})
    write_shard(store, table_path, pool_table, files, image16, text16, embed_table)
    return _summary(store, shard, files, table_path, len(frame), renormalised)


def _summary(store: Store, shard: dict, files: EmbeddedShard, table_path: str, rows: int, renormalised: int) -> dict:
    return {**files.to_dict(), "rows": int(rows), "table": table_path, "content_hash": shard["content_hash"],
            "renormalised": int(renormalised)}


def write_shard(store: Store, table_path: str | None, pool_table: pa.Table | None, files: EmbeddedShard,
                image: np.ndarray, text: np.ndarray, embed_table: pa.Table) -> None:
    """Write one imported shard: embeddings, the pool's table, and LAST the embed table (the done marker)."""
    store.write_npy(files.image_embeddings, image)
    store.write_npy(files.text_embeddings, text)
    if table_path is not None and pool_table is not None:
        store.write_arrow(table_path, pool_table)
    store.write_arrow(files.parquet, embed_table)


# ----- publish --------------------------------------------------------------------------------------
def publish_imported(catalog: Catalog, pool_name: str, folder: str, shards: list[dict], config: dict,
                     pool_inputs: dict, stats: dict | None = None, version: str | None = None) -> dict:
    """The embedding run's manifest (archived) and then the pool's, both stage ``import``.

    ``shards``: per shard ``shard_id``, ``table`` (the pool's record of it), ``content_hash``,
    ``rows`` and its embedded files (relative). Returns ``{"pool", "embeddings"}``. The embedding
    manifest is published first: a failure there leaves the pool as it was.
    """
    store = catalog.store
    version = version or stage_code_version()
    total = sum(s["rows"] for s in shards)
    records = [ShardRecord(shard_id=s["shard_id"], tar=None, parquet=store.uri(s["table"]), n_rows=s["rows"],
                           n_success=s["rows"], content_hash=s["content_hash"]).to_dict() for s in shards]
    pool = Manifest(stage="import", name=pool_name, store=store.root, config=config, code_version=version,
                    inputs=pool_inputs, outputs={"folder": store.uri(catalog.pool_folder(pool_name)), "shards": records},
                    rows={"input": total, "success": total})
    entries = [EmbeddedShard(shard_id=s["shard_id"], parquet=store.uri(s["parquet"]),
                             image_embeddings=store.uri(s["image_embeddings"]),
                             text_embeddings=store.uri(s["text_embeddings"]), caption_embeddings=None,
                             rows=s["rows"]).to_dict() for s in shards if s["rows"] > 0]
    embeddings = catalog.publish(folder, Manifest(
        stage="import", name=pool_name, store=store.root, config=config, code_version=version,
        inputs={"pool_manifest": pool.content_hash}, outputs={"folder": store.uri(folder), "shards": entries},
        rows={"samples": total, "embedded": total}, stats={"not_embedded": {}, **(stats or {})}), archive=True)
    return {"pool": catalog.publish_pool(pool), "embeddings": embeddings}


def publish_import(catalog: Catalog, plan: dict, summaries: list[dict]) -> dict:
    """Publish an import run from its plan and every shard's summary (in plan order)."""
    by_id = {s["shard_id"]: s for s in summaries}
    missing = [s["shard_id"] for s in plan["shards"] if s["shard_id"] not in by_id]
    if missing:
        raise InputError(f"import of pool {plan['pool']!r}: shards {missing[:3]} were not imported")
    shards = [by_id[s["shard_id"]] for s in plan["shards"]]
    config = {"format": plan["format"], "source": plan["source"], "embeddings": plan["embeddings"], "dim": plan["dim"]}
    columns = {c for s in plan["shards"] for c in s["columns"]}
    missing_columns = [c for c in ("sha256", *SIZE_COLUMNS) if c not in columns]
    return publish_imported(catalog, plan["pool"], plan["folder"], shards, config,
                            {"source": plan["source"], "source_content_hash": plan["source_hash"]},
                            {"renormalised": sum(s["renormalised"] for s in shards),
                             "source_lacks": missing_columns})
