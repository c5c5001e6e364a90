"""Duplicate images: exact (same bytes) and perceptual (pHash within a Hamming distance).

In:  per sample a global row id (:func:`~tasks.common.shuffle.global_ids`), ``uid``, and
     ``sha256`` (of the downloaded bytes) or ``phash`` (64-bit, as int64) with, optionally, an
     8 x 8 RGB thumbnail.
Out: the duplicates only: a frame of ``id`` (global row id) and ``duplicate_of`` (the uid that
     stays). In every group of duplicates the sample with the smallest uid is kept
     (deterministic, whatever the order of the shards), the others point to it.

Both run partitioned by key, never over the whole pool in one process:

- exact: rows are shuffled by sha256 (:func:`exact_keys` splits a shard, :func:`exact_duplicates`
  reduces one partition); a group is one sha256, so it lies in one partition.
- perceptual: multi-index hashing. The 64 bits are cut into ``max_distance + 1`` bands; two
  hashes within ``max_distance`` bits agree exactly on at least one band (pigeonhole). Rows are
  shuffled by (band, band value) (:func:`band_keys`); inside each bucket every pair is compared
  (:func:`bucket_pairs`) and a pair is reported only by the first band on which it agrees, so
  the candidate pairs are exactly the all-pairs method's. Work is linear in the pool plus the
  pairs inside buckets (quadratic only in a bucket's size: flat images that share one hash).
  Pairs are then checked for colour (:func:`colour_close`, when thumbnails are given) and grouped
  into connected components (:func:`groups_to_duplicates`) over their endpoints only, which are
  near duplicates, not the pool.

:func:`hamming_pairs` (all pairs, in blocks) and :func:`all_pairs_perceptual_duplicates` are the
single-process reference the tests and the benchmark compare with.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tasks.common.shuffle import hash_partition, split_frame

PAIR_BUDGET = 1 << 22  # candidate pairs compared at once inside a partition


def smallest_per_group(groups: np.ndarray, uids: np.ndarray) -> np.ndarray:
    """For every row, the smallest uid of its group (one Arrow sort, then each group's first forward-filled)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    uids = np.asarray(uids).astype(str)
    table = pa.table({"group": pa.array(groups), "uid": pa.array(uids, type=pa.string())})
    order = pc.sort_indices(table, sort_keys=[("group", "ascending"), ("uid", "ascending")]).to_numpy()
    group = np.asarray(groups)[order]
    first = np.ones(len(group), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    first_position = np.maximum.accumulate(np.where(first, np.arange(len(group)), 0))
    keeper = np.empty(len(group), dtype=uids.dtype)
    keeper[order] = uids[order][first_position]
    return keeper


def exact_keys(frame: pd.DataFrame, n_partitions: int) -> tuple[pd.DataFrame, ...]:
    """Split one shard's ``id``, ``uid``, ``sha256`` by sha256; rows without a hash are unique."""
    rows = frame.loc[frame["sha256"].notna() & (frame["sha256"].astype(str) != ""), ["id", "uid", "sha256"]]
    return split_frame(rows, hash_partition(rows["sha256"].astype(str).to_numpy(), n_partitions), n_partitions)


def exact_duplicates(*pieces: pd.DataFrame, with_uid: bool = False) -> pd.DataFrame:
    """One partition's duplicates: every row whose sha256 is shared with a smaller uid (and its own ``uid``)."""
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=["id", "uid", "sha256"])
    uids = rows["uid"].to_numpy().astype(str)
    keeper = smallest_per_group(rows["sha256"].to_numpy().astype(str), uids)
    duplicate = uids != keeper
    found = pd.DataFrame({"id": rows["id"].to_numpy(dtype=np.int64)[duplicate], "duplicate_of": keeper[duplicate]})
    return found.assign(uid=uids[duplicate]) if with_uid else found


def bands(max_distance: int) -> list[tuple[int, int]]:
    """(shift, width) of the ``max_distance + 1`` bands that cover 64 bits as evenly as possible."""
    count = max_distance + 1
    widths = [64 // count + (1 if b < 64 % count else 0) for b in range(count)]
    shifts = np.concatenate([[0], np.cumsum(widths)[:-1]])
    return [(int(s), int(w)) for s, w in zip(shifts, widths)]


def band_values(hashes: np.ndarray, shift: int, width: int) -> np.ndarray:
    values = np.asarray(hashes, dtype=np.int64).view(np.uint64)
    return ((values >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)


def band_keys(frame: pd.DataFrame, max_distance: int, n_partitions: int) -> tuple[pd.DataFrame, ...]:
    """Split one shard's ``id``/``phash`` rows (decodable ones only) once per band, by (band, value).

    An ``old`` column (an incremental run: rows of the previous run) travels with the rows.
    """
    carried = ["id", "phash"] + (["old"] if "old" in frame else [])
    rows = frame.loc[frame["valid"].to_numpy(dtype=bool), carried]
    hashes = rows["phash"].to_numpy(dtype=np.int64)
    keyed = pd.concat([pd.DataFrame({"band": np.full(len(rows), number, dtype=np.int8),
                                     "value": band_values(hashes, shift, width),
                                     "id": rows["id"].to_numpy(dtype=np.int64), "phash": hashes,
                                     **({"old": rows["old"].to_numpy(dtype=bool)} if "old" in rows else {})})
                       for number, (shift, width) in enumerate(bands(max_distance))], ignore_index=True)
    # the bucket's hash mixes band and value; int64 arithmetic wraps, which is fine for a hash
    mixed = keyed["value"].to_numpy() ^ (keyed["band"].to_numpy().astype(np.int64) * np.int64(0x9E3779B97F4A7C15 - (1 << 64)))
    return split_frame(keyed, hash_partition(mixed, n_partitions), n_partitions)


def _pairs_within_runs(run_end: np.ndarray, partners: np.ndarray, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (p, q), p in [first, last), p < q <= p + partners[p] (< run_end[p]), of positions in sorted runs."""
    positions = np.arange(first, last)
    partners = partners[first:last]
    total = int(partners.sum())
    left = np.repeat(positions, partners)
    ramp = np.arange(total) - np.repeat(np.cumsum(partners) - partners, partners)
    return left, left + 1 + ramp


def bucket_pairs(*pieces: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """One partition's candidate pairs: same bucket, within ``max_distance`` bits, first agreeing band only.

    With an ``old`` column (an incremental run), pairs of two old rows are not formed: in each
    bucket the new rows come first and only they start pairs.
    """
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame(columns=["band", "value", "id", "phash"])
    incremental = "old" in rows
    rows = rows.sort_values(["band", "value", "old", "id"] if incremental else ["band", "value", "id"], kind="stable")
    band_of_row = rows["band"].to_numpy(dtype=np.int64)
    values = rows["value"].to_numpy(dtype=np.int64)
    ids = rows["id"].to_numpy(dtype=np.int64)
    hashes = rows["phash"].to_numpy(dtype=np.int64).view(np.uint64)
    starts = np.ones(len(ids), dtype=bool)
    starts[1:] = (np.diff(band_of_row) != 0) | (np.diff(values) != 0)
    run = np.cumsum(starts)
    run_end = np.searchsorted(run, run, side="right")
    partners = run_end - np.arange(len(ids)) - 1
    if incremental:
        partners[rows["old"].to_numpy(dtype=bool)] = 0
    band_list = bands(max_distance)
    left_ids, right_ids = [], []
    cumulative = np.cumsum(partners)
    first = 0
    while first < len(ids):
        budget_end = np.searchsorted(cumulative, (cumulative[first] - partners[first]) + PAIR_BUDGET, side="right")
        last = max(first + 1, int(budget_end))
        p, q = _pairs_within_runs(run_end, partners, first, last)
        xor = hashes[p] ^ hashes[q]
        close = np.bitwise_count(xor) <= max_distance
        p, q, xor = p[close], q[close], xor[close]
        band_of_pair = band_of_row[p]
        earlier_agrees = np.zeros(len(p), dtype=bool)
        for number, (shift, width) in enumerate(band_list):  # a handful of bands
            agrees = ((xor >> np.uint64(shift)) & np.uint64((1 << width) - 1)) == 0
            earlier_agrees |= agrees & (band_of_pair > number)
        keep = ~earlier_agrees
        left_ids.append(np.minimum(ids[p], ids[q])[keep])
        right_ids.append(np.maximum(ids[p], ids[q])[keep])
        first = last
    if not left_ids:
        return pd.DataFrame({"a": np.zeros(0, np.int64), "b": np.zeros(0, np.int64)})
    return pd.DataFrame({"a": np.concatenate(left_ids), "b": np.concatenate(right_ids)})


def colour_close(thumbs_a: np.ndarray, thumbs_b: np.ndarray, max_color_distance: float | None) -> np.ndarray:
    """Pairs whose 8 x 8 RGB thumbnails differ by at most ``max_color_distance`` on average (all, without a limit).

    pHash sees grey levels only: a red and a green disc at the same place hash alike.
    """
    if max_color_distance is None or len(thumbs_a) == 0:
        return np.ones(len(thumbs_a), dtype=bool)
    difference = np.abs(thumbs_a.astype(np.int16) - thumbs_b.astype(np.int16)).mean(axis=1)
    return difference <= max_color_distance


def groups_to_duplicates(a: np.ndarray, b: np.ndarray, ids: np.ndarray, uids: np.ndarray) -> pd.DataFrame:
    """Connected components of the pairs (a, b) of ids; in each the smallest uid stays.

    ``ids``/``uids``: the uid of every id that appears in a pair. Only pair endpoints are held.
    """
    if len(a) == 0:
        return pd.DataFrame({"id": np.zeros(0, np.int64), "duplicate_of": np.zeros(0, dtype=str)})
    nodes, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (inverse[:len(a)], inverse[len(a):])),
                       shape=(len(nodes), len(nodes)))
    _, labels = connected_components(graph, directed=False)
    node_uids = pd.Series(uids, index=ids).loc[nodes].to_numpy().astype(str)
    keeper = smallest_per_group(labels, node_uids)
    duplicate = node_uids != keeper
    return pd.DataFrame({"id": nodes[duplicate], "duplicate_of": keeper[duplicate]})


def incremental_groups(a: np.ndarray, b: np.ndarray, ids: np.ndarray, uids: np.ndarray,
                       old_keepers: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`groups_to_duplicates` for a grown pool, from the pairs that involve a new row.

    ``ids``/``uids``: every pair endpoint; ``old_keepers``: for an old endpoint the uid that its
    old group kept (its own when it was kept), ``""`` for a new one. Each old group stands as one
    node (named by its keeper), so new rows join, and may bridge, the old groups without the old
    pairs; the group's smallest uid stays, as from scratch. Returns the new rows' duplicates
    (``id``, ``duplicate_of``) and the old keepers that a new smaller uid displaces (``uid``,
    ``duplicate_of``): their rows and every old row pointing to them now point to ``duplicate_of``.
    """
    empty = pd.DataFrame({"id": np.zeros(0, np.int64), "duplicate_of": np.zeros(0, dtype=str)})
    if len(a) == 0:
        return empty, pd.DataFrame({"uid": np.zeros(0, dtype=str), "duplicate_of": np.zeros(0, dtype=str)})
    old_keepers = np.asarray(old_keepers).astype(str)
    old = old_keepers != ""
    # an old endpoint is represented by the smallest endpoint id of its old group
    representative = np.asarray(ids, dtype=np.int64).copy()
    if old.any():
        groups = pd.Series(representative[old]).groupby(old_keepers[old]).transform("min").to_numpy()
        representative[old] = groups
    nodes = pd.DataFrame({"uid": np.where(old, old_keepers, np.asarray(uids).astype(str)), "old": old},
                         index=representative)
    nodes = nodes[~nodes.index.duplicated()]
    lookup = pd.Series(representative, index=ids)
    found = groups_to_duplicates(lookup.loc[a].to_numpy(), lookup.loc[b].to_numpy(), nodes.index.to_numpy(),
                                 nodes["uid"].to_numpy())
    node = nodes.loc[found["id"].to_numpy()]
    is_old = node["old"].to_numpy(dtype=bool)
    displaced = pd.DataFrame({"uid": node["uid"].to_numpy()[is_old],
                              "duplicate_of": found["duplicate_of"].to_numpy()[is_old]})
    return found.loc[~is_old].reset_index(drop=True), displaced


def decisions_from_duplicates(name: str, ids: np.ndarray, duplicates: pd.DataFrame, reason: str,
                              index: pd.Index) -> pd.DataFrame:
    """``keep_<name>``/``reason_<name>``/``duplicate_of_<name>`` for rows ``ids`` from the duplicates found."""
    keeper = pd.Series(duplicates["duplicate_of"].to_numpy(), index=duplicates["id"].to_numpy()).reindex(ids)
    duplicate = keeper.notna().to_numpy()
    return pd.DataFrame({f"keep_{name}": ~duplicate, f"reason_{name}": np.where(duplicate, reason, ""),
                         f"duplicate_of_{name}": np.where(duplicate, keeper.fillna("").to_numpy(), "")}, index=index)


# ----- single-process reference ------------------------------------------------------------
def hamming_pairs(hashes: np.ndarray, max_distance: int, block: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i < j) of 64-bit hashes within ``max_distance`` differing bits (quadratic: tests only)."""
    values = hashes.astype(np.int64).view(np.uint64)
    left, right = [], []
    for start in range(0, len(values), block):
        rows = values[start:start + block]
        distance = np.bitwise_count(rows[:, None] ^ values[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i = i + start
        upper = i < j
        left.append(i[upper])
        right.append(j[upper])
    if not left:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(left), np.concatenate(right)


def all_pairs_perceptual_duplicates(uid: np.ndarray, phash: np.ndarray, max_distance: int,
                                    valid: np.ndarray | None = None, thumbs: np.ndarray | None = None,
                                    max_color_distance: float | None = None) -> pd.DataFrame:
    """The all-pairs method over rows ``0..n-1`` in one process: the reference for tests and benchmarks."""
    n = len(uid)
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    positions = np.flatnonzero(valid)
    i, j = hamming_pairs(np.asarray(phash)[positions], max_distance)
    i, j = positions[i], positions[j]
    if thumbs is not None:
        close = colour_close(thumbs[i], thumbs[j], max_color_distance)
        i, j = i[close], j[close]
    return groups_to_duplicates(i, j, np.arange(n), np.asarray(uid))
