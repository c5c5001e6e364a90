"""A subset on disk: DataComp's uid file, and new webdataset shards holding only its samples.

In:  the uids of a subset (32 hex characters each); for the subset's files, the pool's shards
     (:class:`~tasks.sample.pool_samples.PoolShard`) and, per shard, the positions of its chosen
     samples: their columns are read by one task per shard (or per output shard), never from a
     whole-pool table.
Out: :func:`datacomp_uid_array` (and :func:`uids_from_datacomp` to read it back): the sorted
     structured array of the two uint64 halves of every uid, the format DataComp's
     ``--subset_file`` takes; :func:`subset_piece` and :func:`write_subset`: ``subset.parquet``
     written one pool shard's piece at a time and ``subset.npy`` (the only step that holds the
     whole subset's uids, as 16-byte records, to sort them); :func:`reshard`: tar shards of about
     ``shard_size`` samples, members renamed ``<uid>.<ext>`` so that keys stay unique across source
     shards, each shard published atomically and skipped when it already exists (a rerun redoes
     only what is missing). Next to each tar, ``<n>_stats.json`` (img2dataset's counts: every sample
     a success; DataComp's resharder reads ``successes``), and in the folder ``sizes.json`` (tar
     file name -> sample count), which open_clip's ``get_dataset_size`` reads, so training on the
     shards needs no ``--train-num-samples``.
"""

from __future__ import annotations

import io
import tarfile

from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.errors import InputError, StageFailed
from tasks.common.store import Store
from tasks.common.webdataset import check_member_name, iter_samples
from tasks.common.webdataset import sizes_table, stats_for_resharded
from tasks.sample.pool_samples import PoolShard, map_shards, read_rows

DATACOMP_DTYPE = np.dtype("u8,u8")


def datacomp_uid_array(uids: np.ndarray) -> np.ndarray:
    """Sorted ``(u8, u8)`` records: the high and low 64 bits of each 128-bit hex uid."""
    uids = np.asarray(uids, dtype=str)
    if len(uids) and not np.all(np.char.str_len(uids) == 32):
        bad = uids[np.char.str_len(uids) != 32][0]
        raise InputError(f"uid {bad!r}: a DataComp uid has 32 hex characters")
    try:
        raw = np.frombuffer(bytes.fromhex("".join(uids.tolist())), dtype=">u8").reshape(-1, 2)
    except ValueError as exc:
        raise InputError(f"uids: not hexadecimal ({exc})") from None
    records = np.empty(len(uids), dtype=DATACOMP_DTYPE)
    records["f0"], records["f1"] = raw[:, 0], raw[:, 1]
    return np.sort(records)


def uids_from_datacomp(records: np.ndarray) -> np.ndarray:
    """The hex uids of a DataComp subset array (in its sorted order)."""
    pairs = np.stack([records["f0"], records["f1"]], axis=1).astype(">u8")
    hexed = pairs.tobytes().hex()
    return np.array([hexed[i:i + 32] for i in range(0, len(hexed), 32)], dtype=object)


def shard_groups(per_source: np.ndarray, shard_size: int) -> np.ndarray:
    """Output shard of each source shard: consecutive sources filled up to about ``shard_size``."""
    if shard_size <= 0:
        raise InputError(f"shard_size={shard_size}: must be positive")
    before = np.cumsum(per_source) - per_source
    groups = before // shard_size
    return np.unique(groups, return_inverse=True)[1]


def reshard(store: Store, shards: list[PoolShard], chosen_rows: list[np.ndarray], out_folder: str, shard_size: int,
            shard_ids, client=None) -> list[dict]:
    """Copy the chosen samples into new shards under ``out_folder``, one task per output shard.

    ``chosen_rows[s]``: the positions, within pool shard ``shards[s]``, of its chosen samples
    (sorted); the task writing an output shard reads its sources' ``key`` and ``uid`` columns itself.
    Returns one record per output shard: its ``shard_id`` (``shard_ids(n)`` for output shard n),
    ``tar`` URI and ``n_success`` (its sample count), the fields the training stage reads from a manifest.
    """
    per_source = np.array([len(rows) for rows in chosen_rows], dtype=np.int64)
    used = np.flatnonzero(per_source)
    group_of_used = shard_groups(per_source[used], shard_size)
    jobs = [(f"{out_folder}/{group:05d}.tar", [(shards[int(s)], chosen_rows[int(s)]) for s in used[group_of_used == group]])
            for group in range(int(group_of_used.max()) + 1 if len(used) else 0)]
    counts = list(map_shards(client, _write_shard, jobs, store))
    store.write_json(sizes_path(out_folder), sizes_table([target.rsplit("/", 1)[1] for target, _ in jobs],
                                                             counts))
    return [{"shard_id": shard_ids(number), "tar": store.uri(target), "stats": store.uri(_stats_path(target)),
             "n_success": int(count)} for number, ((target, _), count) in enumerate(zip(jobs, counts))]


def sizes_path(out_folder: str) -> str:
    """The shards' ``sizes.json`` (each tar's sample count, read by open_clip and DataComp's tools)."""
    return f"{out_folder}/sizes.json"


def _stats_path(target: str) -> str:
    return target.removesuffix(".tar") + "_stats.json"


def _write_shard(store: Store, target: str, sources: list[tuple[PoolShard, np.ndarray]]) -> int:
    """Write one output shard from its sources (a pool shard, the positions of its chosen samples);
    returns its sample count."""
    wanted = sum(len(rows) for _, rows in sources)
    if store.exists(target):
        if not store.exists(_stats_path(target)):  # killed between the tar and its stats
            store.write_json(_stats_path(target), stats_for_resharded(wanted))
        return wanted
    staging = store.staging_path(target)
    staging.parent.mkdir(parents=True, exist_ok=True)
    partial = staging.with_suffix(".partial")
    found: set[str] = set()
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as out:
        for shard, rows in sources:
            chosen = read_rows(store, shard, rows, ("uid", "key"))
            keys = dict(zip(chosen["key"], chosen["uid"]))
            _copy_members(store, shard.tar, keys, shard.n_success, out, found)
    if len(found) != wanted:
        partial.unlink(missing_ok=True)
        raise StageFailed(f"reshard {store.uri(target)}: {wanted - len(found)} chosen samples are missing from "
                         f"their source shards")
    partial.replace(staging)
    store.put_file(staging, target, move=True)
    store.write_json(_stats_path(target), stats_for_resharded(wanted))
    return wanted


def _copy_members(store: Store, tar_uri: str, keys: dict[str, str], expected: int | None, out: tarfile.TarFile,
                  found: set[str]) -> None:
    """Copy the samples of ``tar_uri`` whose key is in ``keys`` to ``out``, renamed ``<uid>.<ext>``."""
    for key, files in iter_samples(tar_uri, expected=expected, keys=keys, storage_options=store.fsspec_options()):
        uid = keys[key]
        for ext, data in files.items():
            info = tarfile.TarInfo(check_member_name(f"{uid}.{ext}", f"reshard of {tar_uri}"))
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        found.add(uid)


# ----- subset.parquet and subset.npy, gathered per shard ------------------------------------------
SUBSET_TYPES = {"uid": pa.string(), "key": pa.string(), "text": pa.string(), "keep_probability": pa.float64(),
                "source_shard_id": pa.string(), "source_tar": pa.string()}


def subset_piece(store: Store, shard: PoolShard, rows: np.ndarray,
                 keep_probability: np.ndarray | None) -> tuple[pd.DataFrame, np.ndarray]:
    """One pool shard's part of the subset (its chosen ``rows``): the table's rows (``uid``, ``key``,
    ``text``, ``keep_probability`` if given, ``source_shard_id``, ``source_tar``) and their sorted
    DataComp uid records."""
    piece = read_rows(store, shard, rows, ("uid", "key", "text"))
    if keep_probability is not None:
        piece["keep_probability"] = np.asarray(keep_probability, dtype=np.float64)
    piece["source_shard_id"] = shard.shard_id
    piece["source_tar"] = shard.tar
    return piece, datacomp_uid_array(piece["uid"].to_numpy())


def write_subset(store: Store, parquet: str, datacomp: str, pieces: Iterable[tuple[pd.DataFrame, np.ndarray]],
                 columns: list[str]) -> tuple[str, str]:
    """Write ``subset.parquet`` one piece (row group) at a time, in piece order, and DataComp's sorted
    uid file: the uids of the whole subset (16 bytes a sample) are sorted here, at subset size.
    Returns both URIs."""
    schema = pa.schema([(name, SUBSET_TYPES[name]) for name in columns])
    staging = store.staging_path(parquet)
    staging.parent.mkdir(parents=True, exist_ok=True)
    partial = staging.with_suffix(".partial")
    records = []
    writer = None
    try:
        for piece, uids in pieces:
            table = pa.Table.from_pandas(piece[columns], schema=schema, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema)
            writer.write_table(table)
            records.append(uids)
        if writer is None:  # an empty subset: its columns, no rows
            empty = pd.DataFrame({name: pd.Series([], dtype=object) for name in columns})
            writer = pq.ParquetWriter(partial, pa.Table.from_pandas(empty, schema=schema, preserve_index=False).schema)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(staging)
    uri = store.put_file(staging, parquet, move=True)
    uids = np.sort(np.concatenate(records)) if records else np.zeros(0, dtype=DATACOMP_DTYPE)
    return uri, store.write_npy(datacomp, uids)
