"""Export a pool of this store in DataComp's layout: metadata parquet + npz, optionally the shards.

In:  the catalog, a resolved :class:`~tasks.common.catalog.PoolSnapshot` of a pool that has an
     embedding run (downloaded and embedded, or imported), and an :class:`ExportConfig`: under which
     of DataComp's key prefixes the pool's one embedder goes (``embeddings_key``: ``l14``, the
     default and what DataComp's baselines read, or ``b32``) and whether to lay out the shards too.
Out: in ``Catalog.export_folder(pool, key)`` (``key``: the pool's and the embedding run's content
     hashes, the config and the code version), one number ``NNNNNNNN`` (``{:08d}`` from 0) per shard
     of the pool that holds samples, in pool order, across all its download slices:

     - ``metadata/NNNNNNNN.parquet``: DataComp's columns (:data:`~tasks.pool_export.datacomp.METADATA_SCHEMA`)
       for the shard's samples **that have embeddings** (``embed_ok``; a sample whose image could
       not be decoded is not exported: the manifest counts them by reason), in the shard's (tar)
       order. ``url`` comes from the pool's shard table (joined on ``uid``), ``text``, sizes,
       ``sha256`` and the CLIP score (into the column of ``embeddings_key``) from the embedding
       run. The other score column, and ``face_bboxes``, are copied from the pool's shard table
       when it has them (an imported DataComp pool), else null: this pipeline runs one embedder
       and detects no faces;
     - ``metadata/NNNNNNNN.npz``: row-aligned float16 ``<key>_img`` and ``<key>_txt``; the other
       key's arrays are absent (DataComp's tools read only the key they are asked for);
     - with ``shards=True`` (downloaded pools only: an imported pool has no tars, and asking is an
       :class:`InputError` naming it): ``shards/NNNNNNNN.tar`` (the pool's tar, copied by the
       filesystem: a hard link on a local store where possible, a server-side copy on S3),
       ``shards/NNNNNNNN.parquet`` (img2dataset's table of it), ``shards/NNNNNNNN_stats.json``
       (img2dataset's counts; DataComp's resharder reads ``successes``) and ``shards/sizes.json``
       (open_clip's table of samples per tar). The tar holds every downloaded sample, the metadata
       only those with embeddings.

Per shard, the metadata parquet is written last (after the npz and the shard files), so its
presence marks the shard done and a rerun redoes only unfinished shards; the manifest
(``manifest.json``) is written last of all (:meth:`Catalog.publish`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tasks.common.catalog import Catalog, EmbeddedShard, PoolSnapshot, ShardRecord
from tasks.common.errors import InputError, StageFailed
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.common.webdataset import sizes_table
from tasks.pool_export.datacomp import (EMBEDDING_KEYS, METADATA_COLUMNS, check_embeddings_key, metadata_table,
                                        npz_bytes, npz_keys, score_column, stats_from_status)

EXPORT_VERSION = 1  # bump when a change alters what an export holds
EMBEDDING_COLUMNS = ("uid", "text", "clip_score", "embed_ok")  # what the embedding table must have
OPTIONAL_EMBEDDING_COLUMNS = ("embed_reason", "sha256", "original_width", "original_height")


def stage_code_version() -> str:
    return code_version("export", EXPORT_VERSION)


@dataclass(frozen=True)
class ExportConfig:
    embeddings_key: str = ""  # "": the imported DataComp pool's own key, else "l14"
    shards: bool = False

    def __post_init__(self) -> None:
        if self.embeddings_key:
            check_embeddings_key(self.embeddings_key)
        if not isinstance(self.shards, bool):
            raise InputError(f"shards: expected true or false, got {self.shards!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def shard_files(folder: str, number: int, shards: bool) -> dict[str, str]:
    """The files of export shard ``number`` (relative paths); ``metadata`` is written last."""
    name = f"{number:08d}"
    files = {"npz": f"{folder}/metadata/{name}.npz", "metadata": f"{folder}/metadata/{name}.parquet"}
    if shards:
        files.update(tar=f"{folder}/shards/{name}.tar", parquet=f"{folder}/shards/{name}.parquet",
                     stats=f"{folder}/shards/{name}_stats.json")
    return files


def sizes_file(folder: str) -> str:
    return f"{folder}/shards/sizes.json"


def plan_export(catalog: Catalog, snapshot: PoolSnapshot, config: ExportConfig) -> dict:
    """Check the pool can be exported as asked; return the export's folder, key and one job per shard.

    Every shard of the pool that holds samples gets a number, in pool order; each must have
    embeddings in the snapshot's embedding run.
    """
    pool = snapshot.pool
    if snapshot.embeddings is None:
        why = f" ({snapshot.stale})" if snapshot.stale else ""
        raise InputError(f"export: pool {pool.name!r} has no embeddings{why}; run embed_filter (or pool_refresh "
                         "with an embedder) on it first, or import it with its embeddings")
    shards = pool.shards_with_samples
    if config.shards:
        tarless = [shard.shard_id for shard in shards if not shard.tar]
        if tarless:
            raise InputError(f"export: pool {pool.name!r} has no webdataset shards (tars) for {len(tarless)} of its "
                             f"shards ({tarless[0]}, ...): it was imported from metadata, not downloaded. "
                             "shards=True needs a downloaded pool; export its metadata with shards=False")
    embedded = {shard.shard_id: shard for shard in snapshot.embeddings.shards}
    missing = [shard.shard_id for shard in shards if shard.shard_id not in embedded]
    if missing:
        raise InputError(f"export: pool {pool.name!r}: shard {missing[0]} (and {len(missing) - 1} more) has no "
                         "embeddings in its latest embedding run; run embed_filter again")
    config = ExportConfig(embeddings_key=export_key(snapshot, config.embeddings_key), shards=config.shards)
    key = hash_json({"pool": pool.content_hash, "embeddings": snapshot.embeddings.content_hash,
                     "config": config.to_dict(), "code": stage_code_version()})
    folder = catalog.export_folder(pool.name, key)
    jobs = [{"number": number, "shard": shard.to_dict(), "embedded": embedded[shard.shard_id].to_dict()}
            for number, shard in enumerate(shards)]
    return {"pool": pool.manifest, "embeddings": snapshot.embeddings.manifest, "config": config.to_dict(),
            "key": key, "folder": folder, "jobs": jobs}


def export_key(snapshot: PoolSnapshot, asked: str) -> str:
    """The DataComp key the pool's embeddings go under: as asked, else the key a DataComp import came with,
    else ``l14``. A pool imported from DataComp's metadata keeps its own key (its B/32 embeddings are
    never written as ``l14``)."""
    run = snapshot.embeddings.manifest
    imported = run["config"].get("embeddings") if run["stage"] == "import" else None
    if asked and imported and asked != imported:
        raise InputError(f"embeddings_key: {asked!r}, but pool {snapshot.pool.name!r} was imported with DataComp's "
                         f"{imported!r} embeddings; export it under {imported!r}")
    return asked or imported or "l14"


def export_shard(store: Store, job: dict, folder: str, config: ExportConfig) -> dict:
    """Write one shard's export files unless they exist (the metadata parquet, written last, marks them
    done); return its summary: number, source shard, rows exported, reasons of those left out, files."""
    number, shard, embedded = job["number"], ShardRecord.from_dict(job["shard"]), EmbeddedShard.from_dict(job["embedded"])
    files = shard_files(folder, number, config.shards)
    table = _read_columns(store, embedded.parquet, EMBEDDING_COLUMNS, OPTIONAL_EMBEDDING_COLUMNS)
    ok = table["embed_ok"].to_numpy(dtype=bool)
    summary = {"number": number, "source_shard_id": shard.shard_id, "rows": int(ok.sum()),
               "not_exported": _reasons(table, ok), "n_success": shard.n_success,
               "carried": _carried_columns(store, shard, config.embeddings_key),
               **{name: store.uri(path) for name, path in files.items()}}
    if store.exists(files["metadata"]) and all(store.exists(path) for path in files.values()):
        return summary  # done (a file deleted since is rewritten below, the marker last)
    if config.shards:  # the shard files first: the metadata parquet marks the shard done
        _copy_in_store(store, store.relative(shard.tar), files["tar"])
        _copy_in_store(store, store.relative(shard.parquet), files["parquet"])
        with store.open(store.relative(shard.parquet)) as handle:
            status = pd.read_parquet(handle, columns=["status", "error_message"])
        stats = stats_from_status(status["status"], status["error_message"])
        if stats["successes"] != shard.n_success:
            raise StageFailed(f"export: {shard.parquet} counts {stats['successes']} successes, the pool manifest "
                              f"{shard.n_success}; the pool's shard changed after it was recorded")
        store.write_json(files["stats"], {**stats, "source_shard_id": shard.shard_id})
    exported = table.loc[ok].reset_index(drop=True)
    columns = _pool_columns(store, shard, exported["uid"].to_numpy(), config.embeddings_key)
    image, text = (store.read_npy(store.relative(uri)) for uri in (embedded.image_embeddings, embedded.text_embeddings))
    if len(image) != len(table) or len(text) != len(table):
        raise StageFailed(f"export: {embedded.image_embeddings} holds {len(image)} rows and its text embeddings "
                          f"{len(text)}, its table {embedded.parquet} {len(table)}: the embedding run is damaged")
    image_key, text_key = npz_keys(config.embeddings_key)
    store.write_bytes(files["npz"], npz_bytes({image_key: image[ok], text_key: text[ok]}))
    metadata = metadata_table({
        "uid": exported["uid"], "url": columns["url"], "text": exported["text"].fillna(""),
        "original_width": exported.get("original_width"), "original_height": exported.get("original_height"),
        score_column(config.embeddings_key): exported["clip_score"].to_numpy(dtype=np.float32),
        **{name: columns[name] for name in columns if name != "url"},
        "sha256": exported.get("sha256"),
    })
    store.write_arrow(files["metadata"], metadata)
    return summary


def publish_export(catalog: Catalog, plan: dict, summaries: list[dict]) -> dict:
    """``sizes.json`` (with shards), then the export's manifest, written last; returns the manifest."""
    store, folder, config = catalog.store, plan["folder"], ExportConfig(**plan["config"])
    summaries = sorted(summaries, key=lambda s: s["number"])
    if [s["number"] for s in summaries] != list(range(len(plan["jobs"]))):
        raise StageFailed(f"export {store.uri(folder)}: {len(summaries)} shard results for {len(plan['jobs'])} shards")
    outputs: dict = {"folder": store.uri(folder),
                     "metadata": [{"number": s["number"], "source_shard_id": s["source_shard_id"],
                                   "parquet": s["metadata"], "npz": s["npz"], "rows": s["rows"]} for s in summaries]}
    if config.shards:
        outputs["shards"] = [{"shard_id": s["source_shard_id"], "number": s["number"], "tar": s["tar"],
                              "parquet": s["parquet"], "stats": s["stats"], "n_success": s["n_success"]}
                             for s in summaries]
        sizes = sizes_table([uri.rsplit("/", 1)[1] for uri in (s["tar"] for s in summaries)],
                            [s["n_success"] for s in summaries])
        outputs["sizes"] = store.write_json(sizes_file(folder), sizes)
    reasons: dict[str, int] = {}
    for summary in summaries:
        for reason, count in summary["not_exported"].items():
            reasons[reason] = reasons.get(reason, 0) + count
    pool = plan["pool"]
    manifest = Manifest(
        stage="export", name=pool["name"], store=store.root, config=config.to_dict(),
        code_version=stage_code_version(),
        inputs={"pool_manifest": pool["content_hash"], "embeddings": plan["embeddings"]["content_hash"]},
        outputs=outputs,
        rows={"shards": len(summaries), "exported": sum(s["rows"] for s in summaries),
              "not_exported": sum(reasons.values()), "samples_in_shards": sum(s["n_success"] for s in summaries)},
        stats={"not_exported": dict(sorted(reasons.items())), "columns": list(METADATA_COLUMNS),
               "npz_keys": list(npz_keys(config.embeddings_key)),
               "null_columns": [name for name in _other_columns(config.embeddings_key)
                                if not any(name in s["carried"] for s in summaries)]},
    )
    return catalog.publish(folder, manifest)


# ----- helpers --------------------------------------------------------------------------------------
def _read_columns(store: Store, uri: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """``required`` and whichever of ``optional`` the parquet at ``uri`` has; an error names a missing one."""
    with store.open(store.relative(uri)) as handle:
        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        missing = [name for name in required if name not in names]
        if missing:
            raise StageFailed(f"export: {uri} lacks the columns {missing}")
        return parquet.read(columns=[*required, *(name for name in optional if name in names)]).to_pandas()


def _other_columns(embeddings_key: str) -> list[str]:
    """DataComp's columns this pipeline does not make: the other key's score and ``face_bboxes``."""
    return [score_column(k) for k in EMBEDDING_KEYS if k != embeddings_key] + ["face_bboxes"]


def _carried_columns(store: Store, shard: ShardRecord, embeddings_key: str) -> list[str]:
    """Which of :func:`_other_columns` the pool's shard table has (read from its footer)."""
    with store.open(store.relative(shard.parquet)) as handle:
        names = set(pq.ParquetFile(handle).schema_arrow.names)
    return [name for name in _other_columns(embeddings_key) if name in names]


def _pool_columns(store: Store, shard: ShardRecord, uids: np.ndarray, embeddings_key: str) -> dict[str, object]:
    """``url`` of each of ``uids`` from the pool's shard table, and what it holds of DataComp's other
    columns (the other score, ``face_bboxes``: an imported DataComp pool's), joined on uid."""
    other = _other_columns(embeddings_key)
    table = _read_columns(store, shard.parquet, ("uid", "url"), tuple(other))
    try:
        rows = pd.Index(table["uid"]).get_indexer(uids)
    except pd.errors.InvalidIndexError:
        raise StageFailed(f"export: {shard.parquet} holds a uid twice") from None
    if (rows < 0).any():
        raise StageFailed(f"export: {(rows < 0).sum()} embedded samples of shard {shard.shard_id} (e.g. "
                          f"{uids[rows < 0][0]}) are not in its table {shard.parquet}")
    return {name: table[name].to_numpy()[rows] for name in ("url", *other) if name in table.columns}


def _reasons(table: pd.DataFrame, ok: np.ndarray) -> dict[str, int]:
    reasons = table["embed_reason"] if "embed_reason" in table.columns else pd.Series("not_embedded", index=table.index)
    counts = reasons[~ok].replace("", "not_embedded").value_counts()
    return {str(k): int(v) for k, v in counts.sort_index().items()}


def _copy_in_store(store: Store, source: str, target: str) -> None:
    """Copy ``source`` to ``target`` (both in the store) atomically, by the filesystem, unless it exists.

    Local: a hard link where the filesystem allows (the store never rewrites a file in place, so
    the two names never diverge), else a copy; each made under a temporary name, then renamed.
    Object store: one server-side copy (``fs.copy``), which appears only when complete.
    """
    if store.exists(target):
        return
    if not store.is_local:
        store.fs.copy(store.path(source), store.path(target))
        return
    destination = store.path(target)
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    temporary = os.path.join(os.path.dirname(destination), f".tmp-{uuid.uuid4().hex}")
    try:
        try:
            os.link(store.path(source), temporary)
        except OSError:  # another device, or a filesystem without hard links
            shutil.copyfile(store.path(source), temporary)
        os.replace(temporary, destination)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
