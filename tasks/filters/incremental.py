"""Incremental filtering of a grown pool: the old shards' decisions updated, not decided again.

In:  the previous run's decisions files (one per old shard: every column of
     :func:`tasks.filters.run.shard_decisions`), and what the pool-wide filters found for the new
     rows against the old ones.
Out: :func:`old_exact_input` the old rows that exact dedup joins with (the kept ones: a group of
     old duplicates is represented by its keeper); :func:`old_keepers` the uid each old pHash
     endpoint's group kept; :func:`updated_old_decisions` an old shard's dedup columns after new
     samples displaced some old keepers; :func:`changed_decisions` how many of an old shard's
     decisions changed, per filter; :func:`incremental_section` the ``incremental`` section of the
     report and the manifest's ``stats``.

The dedup rule is the one of a run from scratch: in a group of duplicates the smallest uid
stays. A new sample with a smaller uid than its group's old keeper displaces it: the old keeper
becomes a duplicate of the new sample and every old row pointing to the old keeper points to the
new one (``repointed``: still removed, with another ``duplicate_of``). A new sample that joins two
old pHash groups merges them, and the larger of their keepers is displaced. SemDeDup flips an old
row when a new row of its fine cluster is ranked better and close enough; the CLIP score's top
fraction moves with the pool, so old rows may pass or fail it after a refresh.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tasks.common.shuffle import global_ids
from tasks.common.store import Store

FILTER_RULES = {
    "exact_dedup": "a new sample has the same sha256 and a smaller uid (the smallest uid of a group stays)",
    "phash_dedup": "a new sample is a near duplicate (pHash and colour) with a smaller uid, or joins two old groups "
                   "(the smallest uid of a connected group stays)",
    "semdedup": "a new sample of the same fine k-means cluster is ranked better (farther from the centroid) and its "
                "cosine exceeds semdedup_threshold",
    "clip_score": "the top fraction's cutoff is the quantile of the grown pool's scores",
}


def _read(store: Store, path: str, columns: list[str]) -> pd.DataFrame:
    with store.open(path) as handle:
        return pd.read_parquet(handle, columns=columns)


def old_exact_input(store: Store, decisions_file: str, shard: int) -> pd.DataFrame:
    """``id``, ``uid``, ``sha256`` of the rows of an old shard that exact dedup kept."""
    frame = _read(store, decisions_file, ["uid", "sha256", "keep_exact_dedup"])
    kept = frame["keep_exact_dedup"].to_numpy(dtype=bool)
    return pd.DataFrame({"id": global_ids(shard, np.flatnonzero(kept)), "uid": frame["uid"].to_numpy()[kept],
                         "sha256": frame["sha256"].to_numpy()[kept]})


def old_keepers(store: Store, decisions_file: str | None, rows: np.ndarray) -> np.ndarray:
    """For the given rows of an old shard, the uid their pHash group kept (their own when kept); ``""`` for a new shard."""
    if decisions_file is None:
        return np.full(len(rows), "", dtype=object)
    frame = _read(store, decisions_file, ["uid", "duplicate_of_phash_dedup"]).iloc[rows]
    pointer = frame["duplicate_of_phash_dedup"].fillna("").astype(str).to_numpy()
    return np.where(pointer != "", pointer, frame["uid"].astype(str).to_numpy()).astype(object)


def updated_old_decisions(name: str, previous: pd.DataFrame, displaced: pd.DataFrame, reason: str,
                          index: pd.Index) -> pd.DataFrame:
    """``keep_<name>``/``reason_<name>``/``duplicate_of_<name>`` of an old shard: its previous decisions
    with the ``displaced`` old keepers (``uid`` -> ``duplicate_of``) applied."""
    new_keeper = pd.Series(displaced["duplicate_of"].to_numpy(), index=displaced["uid"].to_numpy())
    keep = previous[f"keep_{name}"].to_numpy(dtype=bool)
    pointer = previous[f"duplicate_of_{name}"].fillna("").astype(str)
    uid = previous["uid"].astype(str)
    now_duplicate = keep & uid.isin(new_keeper.index).to_numpy()
    repointed = ~keep & pointer.isin(new_keeper.index).to_numpy()
    pointer = np.where(now_duplicate, uid.map(new_keeper).fillna("").to_numpy(),
                       np.where(repointed, pointer.map(new_keeper).fillna("").to_numpy(), pointer.to_numpy()))
    return pd.DataFrame({f"keep_{name}": keep & ~now_duplicate,
                         f"reason_{name}": np.where(now_duplicate, reason, previous[f"reason_{name}"].astype(str)),
                         f"duplicate_of_{name}": pointer}, index=index)


def changed_decisions(previous: pd.DataFrame, decided: pd.DataFrame, names: list[str]) -> dict:
    """Per filter (and ``keep``, the overall decision): old rows now removed, now kept, and still removed
    but pointing to another keeper (``repointed``)."""
    changed = {}
    for name, column in [(n, f"keep_{n}") for n in names] + [("keep", "keep")]:
        if column not in previous:
            continue
        before, after = previous[column].to_numpy(dtype=bool), decided[column].to_numpy(dtype=bool)
        entry = {"removed": int((before & ~after).sum()), "restored": int((~before & after).sum()), "repointed": 0}
        pointer = f"duplicate_of_{name}"
        if pointer in previous and pointer in decided:
            moved = previous[pointer].fillna("").astype(str).to_numpy() != decided[pointer].astype(str).to_numpy()
            entry["repointed"] = int((moved & ~before & ~after).sum())
        changed[name] = entry
    return changed


def combine_changed(parts: list[dict]) -> dict:
    """The sum of several shards' :func:`changed_decisions`."""
    total: dict = {}
    for part in parts:
        for name, entry in part.items():
            into = total.setdefault(name, {"removed": 0, "restored": 0, "repointed": 0})
            for key, value in entry.items():
                into[key] += value
    return total


def incremental_section(previous: dict, previous_report: dict, shard_ids: list[str], old_shards: dict,
                        embeddings, modes: dict, total: dict, cutoff: float | None) -> dict:
    """The report's ``incremental`` section: what was reused from ``previous`` and which old decisions changed."""
    rows = {shard.shard_id: shard.rows for shard in embeddings.shards}
    changed = total.get("changed", {})
    none = {"removed": 0, "restored": 0, "repointed": 0}
    return {
        "previous_run": previous["outputs"]["folder"], "previous_manifest": previous["content_hash"],
        "old_shards": len(old_shards), "new_shards": len(shard_ids) - len(old_shards),
        "old_samples": int(sum(rows.get(s, 0) for s in old_shards)),
        "new_samples": int(sum(rows.get(s, 0) for s in shard_ids if s not in old_shards)),
        "rowwise": "old shards' row-wise decisions carried over from the previous run; new shards' decided",
        "filters": {name: {"mode": mode, "old_decisions_changed": changed.get(name, none),
                           "why": FILTER_RULES.get(name, "")} for name, mode in modes.items()},
        "old_samples_changed": changed.get("keep", none),
        "clip_score_cutoff": {"previous": previous_report.get("clip_score_cutoff"), "now": cutoff},
    }
