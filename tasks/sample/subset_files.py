"""A subset on disk: DataComp's uid file, and new webdataset shards holding only its samples.

In:  the uids of a subset (32 hex characters each); for resharding, the pool's shards and, per
     chosen sample, its shard and key.
Out: :func:`datacomp_uid_array` (and :func:`uids_from_datacomp` to read it back): the sorted
     structured array of the two uint64 halves of every uid, the format DataComp's
     ``--subset_file`` takes; :func:`reshard`: tar shards of about ``shard_size`` samples,
     members renamed ``<uid>.<ext>`` so that keys stay unique across source shards, each shard
     published atomically and skipped when it already exists (a rerun redoes only what is missing).
"""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pandas as pd

from tasks.common.errors import InputError, StageFailed
from tasks.common.store import Store
from tasks.common.webdataset import iter_samples

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


def reshard(store: Store, shards: list[dict], chosen: pd.DataFrame, out_folder: str, shard_size: int, shard_ids,
            client=None) -> list[dict]:
    """Copy the chosen samples (``uid``, ``key``, ``shard`` columns) into new shards under ``out_folder``.

    Returns one record per output shard: its ``shard_id`` (``shard_ids[n]`` for output shard n),
    ``tar`` URI and ``n_success`` (its sample count), the fields the training stage reads from a manifest.
    """
    per_source = np.bincount(chosen["shard"].to_numpy(), minlength=len(shards))
    used = np.flatnonzero(per_source)
    group_of_used = shard_groups(per_source[used], shard_size)
    by_shard = {int(s): frame for s, frame in chosen.groupby("shard")}
    jobs = []
    for group in range(int(group_of_used.max()) + 1 if len(used) else 0):
        sources = [(shards[int(s)]["tar"], dict(zip(by_shard[int(s)]["key"], by_shard[int(s)]["uid"])),
                    shards[int(s)].get("n_success")) for s in used[group_of_used == group]]
        jobs.append((f"{out_folder}/{group:05d}.tar", sources))
    if client is not None:
        futures = client.map(_write_shard, [store] * len(jobs), [j[0] for j in jobs], [j[1] for j in jobs],
                             pure=False)
        counts = client.gather(futures)
    else:
        counts = [_write_shard(store, target, sources) for target, sources in jobs]
    return [{"shard_id": shard_ids(number), "tar": store.uri(target), "n_success": int(count)}
            for number, ((target, _), count) in enumerate(zip(jobs, counts))]


def _write_shard(store: Store, target: str, sources: list[tuple[str, dict[str, str], int | None]]) -> int:
    """Write one output shard from its sources (tar URI, {key: uid}, recorded sample count or None);
    returns its sample count."""
    wanted = sum(len(keys) for _, keys, _ in sources)
    if store.exists(target):
        return wanted
    staging = store.staging_path(target)
    staging.parent.mkdir(parents=True, exist_ok=True)
    partial = staging.with_suffix(".partial")
    found: set[str] = set()
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as out:
        for tar_uri, keys, expected in sources:
            _copy_members(store, tar_uri, keys, expected, out, found)
    if len(found) != wanted:
        partial.unlink(missing_ok=True)
        raise StageFailed(f"reshard {store.uri(target)}: {wanted - len(found)} chosen samples are missing from "
                         f"their source shards")
    partial.replace(staging)
    store.put_file(staging, target, move=True)
    return wanted


def _copy_members(store: Store, tar_uri: str, keys: dict[str, str], expected: int | None, out: tarfile.TarFile,
                  found: set[str]) -> None:
    """Copy the samples of ``tar_uri`` whose key is in ``keys`` to ``out``, renamed ``<uid>.<ext>``."""
    for key, files in iter_samples(tar_uri, expected=expected, keys=keys, storage_options=store.fsspec_options()):
        uid = keys[key]
        for ext, data in files.items():
            info = tarfile.TarInfo(f"{uid}.{ext}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
        found.add(uid)
