"""Run the filters over an embedded pool: row-wise per shard, then pool-wide, then the report and manifest.

In:  the catalog, the embedding run (:class:`~tasks.common.catalog.EmbeddingRun`: per shard id its
     table and image embeddings), a :class:`~tasks.filters.config.FilterConfig`, the run's folder
     (:meth:`~tasks.common.catalog.Catalog.filter_folder`) and optionally the evaluation images'
     embeddings.
Out, in the run folder, through the catalog's paths:

- per shard, the row-wise decisions (basic, NSFW text and image, eval-set dedup) with the columns
  the pool-wide filters need;
- per shard, the decisions: every sample, row-aligned with its embeddings, with ``keep_<filter>``
  and ``reason_<filter>`` for every filter that ran and the overall ``keep``;
- the report (JSON and plot): samples removed per filter and reason, and how the filters overlap.
  Filters that did not run are listed as skipped, with why;
- last, the stage's manifest: the decisions by shard id, the report, counts.

The pool-wide filters run on a Dask client's workers (or, without one, the same graph on Dask's
local scheduler), partitioned by key: exact dedup by a shuffle on sha256, perceptual dedup by a
shuffle on pHash bands (:mod:`tasks.filters.dedup`), SemDeDup per k-means cluster
(:mod:`tasks.filters.semdedup`), the CLIP score cutoff by an exact distributed quantile
(:mod:`tasks.filters.clip_score`). Each shard's rows are read by worker tasks, column by column
as each filter needs them. What reaches this process: per-shard counts; the duplicates found
(their ids and the uid that stays) and pHash's candidate pairs with their endpoints' thumbnails
(their number is that of the near duplicates, but a group of m identical hashes makes
m (m - 1) / 2 pairs); and for SemDeDup about 28 bytes per embedded sample (see there).
Each shard's decisions are written by a worker task, which returns its counts for the report.

Incremental runs: given ``previous`` (the finished run of the same filters on an earlier version
of the pool, whose shards are all among this run's, unchanged; :func:`tasks.filters.plan.filter_run`
finds it), the old shards' row-wise decisions were carried over (``reuse`` in
:func:`rowwise_filters`) and the pool-wide filters treat the new shards against the old ones
(:mod:`tasks.filters.incremental`): exact and perceptual dedup join the new rows with the old
ones but form no old-vs-old pair, and give what a run from scratch gives (the smallest uid of a
group stays, so a new smaller uid displaces an old keeper); SemDeDup assigns the rows to the
previous run's k-means (:func:`~tasks.filters.semdedup.incremental_semantic_duplicates`); the CLIP
score cutoff is computed over the whole pool again. The report and the manifest's ``stats`` gain
``incremental``: the previous run, old and new shards, and per filter how many old decisions
changed and why. What reaches this process in addition: one (uid, new keeper) pair per old
keeper a new sample displaced, and the old keeper's uid of every pHash pair endpoint.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from tasks.common.catalog import Catalog, EmbeddedShard, EmbeddingRun
from tasks.common.errors import InputError
from tasks.common.hashing import code_version
from tasks.common.manifest import Manifest
from tasks.common.shuffle import compute, global_ids, partitions_for, shuffle, split_ids
from tasks.common.store import Store
from tasks.filters.basic import basic_decisions, size_known
from tasks.filters.clip_score import clip_score_cutoff, clip_score_decisions
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import (band_keys, bands, bucket_pairs, colour_close, decisions_from_duplicates,
                                 exact_duplicates, exact_keys, groups_to_duplicates, incremental_groups)
from tasks.filters.eval_dedup import eval_dedup_decisions
from tasks.filters.nsfw import load_image_head, nsfw_image_decisions, nsfw_text_decisions
from tasks.filters.report import combine_counts, filter_names, filter_report, report_plot, shard_counts
from tasks.filters.incremental import (changed_decisions, incremental_section, old_exact_input, old_keepers,
                                       updated_old_decisions)
from tasks.filters.semdedup import REFIT_GROWTH, incremental_semantic_duplicates, semantic_duplicates, stored_centroids

FILTER_VERSION = 6  # bump when a change alters the decisions
EXACT_ROWS_PER_PARTITION = 1_000_000
BAND_ROWS_PER_PARTITION = 2_000_000
REDUCE_FANIN = 16
CARRIED = ["uid", "key", "text", "clip_score", "embed_ok", "embed_reason", "phash", "thumb", "sha256", "width",
           "height", "original_width", "original_height"]
CARRIED_IF_PRESENT = ["clip_b32_score", "clip_l14_score"]  # the scores of an imported DataComp pool
SIZE_COLUMNS = ["width", "height", "original_width", "original_height"]


def stage_code_version() -> str:
    return code_version("filter", FILTER_VERSION)


def rowwise_filters(store: Store, shard: EmbeddedShard, config: FilterConfig, target: str,
                    eval_embeddings: str | None = None, reuse: str | None = None) -> str:
    """Row-wise decisions of one embedded shard into ``target``; returns it (skips work already done).

    ``reuse``: the same shard's row-wise decisions in a previous run of the same filters on the same
    embeddings (an incremental run): copied, not computed again.
    """
    if store.exists(target):
        return target
    if reuse and store.exists(reuse):
        store.write_bytes(target, store.read_bytes(reuse))
        return target
    with store.open(store.relative(shard.parquet)) as handle:
        table = pd.read_parquet(handle)
    images = store.read_npy(store.relative(shard.image_embeddings)).astype(np.float32)
    carried = CARRIED + [c for c in CARRIED_IF_PRESENT if c in table]
    parts = [table[carried], basic_decisions(table, config), nsfw_text_decisions(table["text"], config)]
    head = (load_image_head(config.nsfw_image_head, store.options_for(config.nsfw_image_head))
            if config.nsfw_image_head else None)
    image_nsfw = nsfw_image_decisions(images, table.index, config, head, table["embed_ok"].to_numpy())
    if image_nsfw is not None:
        parts.append(image_nsfw)
    if eval_embeddings:
        parts.append(eval_dedup_decisions(images, store.read_npy(eval_embeddings).astype(np.float32), table.index,
                                          config.eval_dedup_threshold, table["embed_ok"].to_numpy()))
    store.write_bytes(target, pd.concat(parts, axis=1).to_parquet(index=False))
    return target


def _read_columns(store: Store, rows_file: str, columns: list[str]) -> pd.DataFrame:
    with store.open(rows_file) as handle:
        return pd.read_parquet(handle, columns=columns)


def exact_input(store: Store, rows_file: str, shard: int) -> pd.DataFrame:
    frame = _read_columns(store, rows_file, ["uid", "sha256"])
    frame.insert(0, "id", global_ids(shard, len(frame)))
    return frame


def phash_input(store: Store, rows_file: str, shard: int, old: bool | None = None) -> pd.DataFrame:
    """``id``, ``phash``, ``valid`` of one shard's rows (and ``old``, in an incremental run)."""
    frame = _read_columns(store, rows_file, ["phash", "embed_reason"])
    return pd.DataFrame({"id": global_ids(shard, len(frame)), "phash": frame["phash"].to_numpy(dtype=np.int64),
                         "valid": (frame["embed_reason"] != "undecodable").to_numpy(),
                         **({} if old is None else {"old": np.full(len(frame), old)})})


def clip_scores(store: Store, rows_file: str) -> np.ndarray:
    return _read_columns(store, rows_file, ["clip_score"])["clip_score"].to_numpy(dtype=np.float64)


def embedded_rows(store: Store, rows_file: str) -> np.ndarray:
    return np.flatnonzero(_read_columns(store, rows_file, ["embed_ok"])["embed_ok"].to_numpy(dtype=bool))


def endpoint_details(store: Store, rows_file: str, rows: np.ndarray, thumbs: bool) -> tuple:
    """uid (and thumbnail bytes as a uint8 matrix) of the given rows of one shard."""
    frame = _read_columns(store, rows_file, ["uid", "thumb"] if thumbs else ["uid"]).iloc[rows]
    pictures = (np.frombuffer(b"".join(frame["thumb"]), dtype=np.uint8).reshape(len(frame), -1)
                if thumbs and len(frame) else None)
    return frame["uid"].to_numpy().astype(str), pictures


def missing_metadata(store: Store, rows_file: str) -> dict:
    """How many rows of one shard lack image sizes, and how many lack a sha256."""
    import pyarrow.parquet as pq

    with store.open(rows_file) as handle:
        present = set(pq.read_schema(handle).names)
    frame = _read_columns(store, rows_file, [c for c in ("sha256", *SIZE_COLUMNS) if c in present])
    sha = frame["sha256"] if "sha256" in frame else pd.Series(None, index=frame.index, dtype=object)
    return {"rows": int(len(frame)), "no_size": int((~size_known(frame)).sum()),
            "no_sha256": int((sha.isna() | (sha.astype(str) == "")).sum())}


def _gather_duplicates(client, partitions: list) -> pd.DataFrame:
    found = compute(client, partitions)
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame({"id": [], "duplicate_of": []})


def exact_dedup(store: Store, rows_files: list[str], rows: int, client,
                old_decisions: list[str | None] | None = None) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Exact duplicates (id, duplicate_of) by a shuffle on sha256.

    ``old_decisions`` (an incremental run: per shard the previous run's decisions, ``None`` for a new
    shard): old shards join with their kept rows only, and the result is (the new rows' duplicates,
    the old keepers displaced: ``uid``, ``duplicate_of``).
    """
    import dask

    n = partitions_for(rows, EXACT_ROWS_PER_PARTITION)
    if old_decisions is None:
        inputs = [dask.delayed(exact_input, pure=True)(store, f, number) for number, f in enumerate(rows_files)]
        return _gather_duplicates(client, [dask.delayed(exact_duplicates, pure=True)(*pieces)
                                           for pieces in shuffle(inputs, exact_keys, n, n)])
    inputs = [dask.delayed(exact_input, pure=True)(store, f, number) if old is None
              else dask.delayed(old_exact_input, pure=True)(store, old, number)
              for number, (f, old) in enumerate(zip(rows_files, old_decisions))]
    found = _gather_duplicates(client, [dask.delayed(exact_duplicates, pure=True)(*pieces, with_uid=True)
                                        for pieces in shuffle(inputs, exact_keys, n, n)])
    old_shards = np.flatnonzero([old is not None for old in old_decisions])
    displaced = np.isin(split_ids(found["id"].to_numpy(dtype=np.int64))[0], old_shards)
    return (found.loc[~displaced, ["id", "duplicate_of"]].reset_index(drop=True),
            found.loc[displaced, ["uid", "duplicate_of"]].reset_index(drop=True))


def perceptual_dedup(store: Store, rows_files: list[str], rows: int, config: FilterConfig, client,
                     old_decisions: list[str | None] | None = None) -> pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
    """Perceptual duplicates (id, duplicate_of): bands shuffled, pairs in buckets, colour, components.

    ``old_decisions`` as for :func:`exact_dedup`: only pairs with a new row are formed, old rows
    stand for their old groups (:func:`~tasks.filters.dedup.incremental_groups`).
    """
    import dask

    n = partitions_for(rows * len(bands(config.phash_max_distance)), BAND_ROWS_PER_PARTITION)
    inputs = [dask.delayed(phash_input, pure=True)(store, f, number,
                                                   None if old_decisions is None else old_decisions[number] is not None)
              for number, f in enumerate(rows_files)]
    pairs = compute(client, [dask.delayed(bucket_pairs, pure=True)(*pieces, max_distance=config.phash_max_distance)
                             for pieces in shuffle(inputs, band_keys, n, config.phash_max_distance, n)])
    pairs = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame({"a": [], "b": []})
    a, b = pairs["a"].to_numpy(dtype=np.int64), pairs["b"].to_numpy(dtype=np.int64)
    endpoints = np.unique(np.concatenate([a, b]))
    shard_of, row_of = split_ids(endpoints)
    with_thumbs = config.phash_max_color_distance is not None
    by_shard = positions_by_shard(endpoints)  # endpoints are sorted, so each shard's rows ascend
    details = compute(client, [dask.delayed(endpoint_details, pure=True)(store, rows_files[s], row_of[positions],
                                                                          with_thumbs)
                               for s, positions in sorted(by_shard.items())])
    uids = np.concatenate([d[0] for d in details]) if details else np.zeros(0, dtype=str)
    if with_thumbs and len(a):
        thumbs = np.concatenate([d[1] for d in details])  # endpoints in id order: shards ascending, rows ascending
        position = np.searchsorted(endpoints, a), np.searchsorted(endpoints, b)
        close = colour_close(thumbs[position[0]], thumbs[position[1]], config.phash_max_color_distance)
        a, b = a[close], b[close]
    if old_decisions is None:
        return groups_to_duplicates(a, b, endpoints, uids)
    keepers = compute(client, [dask.delayed(old_keepers, pure=True)(store, old_decisions[s], row_of[positions])
                               for s, positions in sorted(by_shard.items())])
    keepers = np.concatenate(keepers).astype(str) if keepers else np.zeros(0, dtype=str)
    return incremental_groups(a, b, endpoints, uids, keepers)


def shard_decisions(store: Store, rows_file: str, target: str, shard: int, config: FilterConfig,
                    exact: pd.DataFrame | None, perceptual: pd.DataFrame | None, semantic: np.ndarray | None,
                    cutoff: float | None, old: dict | None = None) -> dict:
    """One shard's decisions, written to ``target``; returns its counts for the report.

    ``old`` (an old shard in an incremental run): ``decisions`` (the previous run's file of this
    shard), ``incremental`` (the dedup filters updated from it rather than decided again) and
    ``displaced`` (per dedup filter, the old keepers a new sample displaced); the counts then
    include how many of its old decisions changed (``changed``).
    """
    with store.open(rows_file) as handle:
        frame = pd.read_parquet(handle)
    ids = global_ids(shard, len(frame))
    previous = None
    if old is not None:
        with store.open(old["decisions"]) as handle:
            previous = pd.read_parquet(handle)
    parts = [frame]
    for name, found, reason in (("exact_dedup", exact, "exact_duplicate"), ("phash_dedup", perceptual, "near_duplicate")):
        if found is None:
            continue
        if previous is not None and name in old["incremental"]:
            parts.append(updated_old_decisions(name, previous, old["displaced"][name], reason, frame.index))
        else:
            parts.append(decisions_from_duplicates(name, ids, found, reason, frame.index))
    if semantic is not None:
        duplicate = np.isin(ids, semantic)
        if previous is not None and "semdedup" in old["incremental"]:
            duplicate |= ~previous["keep_semdedup"].to_numpy(dtype=bool)  # an old duplicate stays one
        parts.append(pd.DataFrame({"keep_semdedup": ~duplicate,
                                   "reason_semdedup": np.where(duplicate, "semantic_duplicate", "")}, index=frame.index))
    if cutoff is not None:
        parts.append(clip_score_decisions(frame["clip_score"], cutoff))
    decided = pd.concat(parts, axis=1)
    names = filter_names(decided)
    decided["keep"] = decided[[f"keep_{n}" for n in names]].all(axis=1) & decided["embed_ok"]
    decided["reason_embed"] = decided["embed_reason"]
    store.write_bytes(target, decided.drop(columns=["thumb"]).to_parquet(index=False))
    counts = shard_counts(decided, names)
    if previous is not None:
        counts["changed"] = changed_decisions(previous, decided, names)
    return counts


def positions_by_shard(ids: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of the given global ids, grouped by their shard number (one sort, not one mask per shard)."""
    shards = split_ids(ids)[0]
    order = np.argsort(shards, kind="stable")
    numbers, starts = np.unique(shards[order], return_index=True)
    return dict(zip(numbers.tolist(), np.split(order, starts[1:]))) if len(order) else {}


def _per_shard(duplicates: pd.DataFrame | None, n_shards: int) -> list:
    if duplicates is None:
        return [None] * n_shards
    groups = positions_by_shard(duplicates["id"].to_numpy(dtype=np.int64))
    empty = duplicates.iloc[:0]
    return [duplicates.iloc[groups[number]] if number in groups else empty for number in range(n_shards)]


def poolwide_filters(catalog: Catalog, embeddings: EmbeddingRun, rows_files: dict[str, str], config: FilterConfig,
                     folder: str, inputs: dict, client=None, previous: dict | None = None) -> dict:
    """Dedup, SemDeDup and CLIP score over the whole pool on ``client``'s workers, the overall decision
    per sample, the report, and last the stage's manifest (returned; the existing one when this run
    finished before).

    ``rows_files`` maps every shard id to its row-wise decisions; ``inputs`` are the content hashes
    recorded in the manifest; ``previous``: the manifest of the run to treat as the old pool (an
    incremental run, see the module's docstring), whose shards must all be in ``rows_files``.
    """
    import dask

    store = catalog.store
    done = catalog.finished(folder)
    if done is not None:
        return done
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.perf_counter() - clock, 2)
        clock = time.perf_counter()

    shard_ids = list(rows_files)
    if not shard_ids:
        raise InputError(f"filters: the embedding run of pool {embeddings.manifest['name']!r} has no shard to filter")
    files = [rows_files[s] for s in shard_ids]
    rows = sum(shard.rows for shard in embeddings.shards if shard.shard_id in rows_files)
    skipped = {}
    source = f"the pool was imported from {embeddings.manifest.get('config', {}).get('format', 'embedded')} metadata"
    missing = compute(client, [dask.delayed(missing_metadata, pure=True)(store, f) for f in files])
    no_size, no_sha256 = sum(m["no_size"] for m in missing), sum(m["no_sha256"] for m in missing)
    if no_size:
        skipped["basic_size_rules"] = (f"too_small and aspect_ratio not checked for {no_size} of {rows} samples "
                                       "without image sizes" + ("" if embeddings.has_image_bytes else f" ({source})"))
    old_shards = (previous or {}).get("outputs", {}).get("decisions", {})
    if set(old_shards) - set(shard_ids):
        raise InputError(f"filters: the previous run {previous['outputs']['folder']} has shards this run lacks "
                         f"({sorted(set(old_shards) - set(shard_ids))[:3]}); it cannot be the old pool of this run")
    old_decisions = [store.relative(old_shards[s]) if s in old_shards else None for s in shard_ids]
    new_numbers = np.flatnonzero([old is None for old in old_decisions])
    modes: dict[str, str] = {}  # per pool-wide filter of an incremental run: how it treated the old pool

    def incremental(name: str) -> bool:
        """Whether filter ``name`` can treat the new shards against the previous run's decisions."""
        if previous is None:
            return False
        if name in previous["stats"]["skipped"]:
            modes[name] = "from scratch: the previous run skipped it"
            return False
        modes[name] = "incremental"
        return True

    displaced = {}
    run_exact = config.exact_dedup and no_sha256 < rows
    if config.exact_dedup and not run_exact:
        skipped["exact_dedup"] = "no sha256 of the image bytes in the pool" + (
            "" if embeddings.has_image_bytes else f" ({source})")
    exact = None
    if run_exact and incremental("exact_dedup"):
        exact, displaced["exact_dedup"] = exact_dedup(store, files, rows, client, old_decisions)
    elif run_exact:
        exact = exact_dedup(store, files, rows, client)
    lap("exact_dedup")
    run_phash = config.phash_dedup and embeddings.has_image_bytes
    if config.phash_dedup and not run_phash:
        skipped["phash_dedup"] = f"needs image bytes; {source}"
    perceptual = None
    if run_phash and incremental("phash_dedup"):
        perceptual, displaced["phash_dedup"] = perceptual_dedup(store, files, rows, config, client, old_decisions)
    elif run_phash:
        perceptual = perceptual_dedup(store, files, rows, config, client)
    lap("phash_dedup")
    semantic = None
    if config.semdedup_threshold is not None:
        matrices = {shard.shard_id: store.relative(shard.image_embeddings) for shard in embeddings.shards}
        eligible = compute(client, [dask.delayed(embedded_rows, pure=True)(store, f) for f in files])
        embedded = sum(len(e) for e in eligible)
        taking_part = [(matrices[s], e, global_ids(number, e)) for number, (s, e) in enumerate(zip(shard_ids, eligible))]
        kept = stored_centroids(store, store.relative(previous["outputs"]["folder"])) if incremental("semdedup") else None
        if previous is not None and modes["semdedup"] == "incremental" and kept is None:
            modes["semdedup"] = "from scratch: the previous run kept no k-means centroids"
        elif kept is not None and embedded > REFIT_GROWTH * int(kept["fitted_rows"]):
            modes["semdedup"] = (f"from scratch: the pool has {embedded} embedded samples, more than {REFIT_GROWTH:g} "
                                 f"times the {int(kept['fitted_rows'])} the k-means was fitted on: fitted again")
            kept = None
        if kept is not None:
            semantic = incremental_semantic_duplicates(store, taking_part, new_numbers, config.semdedup_threshold,
                                                       store.relative(previous["outputs"]["folder"]), folder, client)
        else:
            cluster_size = max(1, round(embedded / config.semdedup_clusters)) if config.semdedup_clusters else 1000
            semantic = semantic_duplicates(store, taking_part, config.semdedup_threshold, cluster_size, client=client,
                                           centroids_folder=folder)
    else:
        skipped["semdedup"] = "no semdedup_threshold set"
    lap("semdedup")
    cutoff = None
    if config.clip_score_threshold is not None or config.clip_score_top_fraction is not None:
        scores = [dask.delayed(clip_scores, pure=True)(store, f) for f in files]
        scores = client.persist(scores) if client is not None else compute(None, scores)
        cutoff = clip_score_cutoff(scores, config.clip_score_threshold, config.clip_score_top_fraction, client)
        if cutoff is None:
            skipped["clip_score"] = "no finite CLIP score in the pool: no top fraction to take"
        elif previous is not None:
            modes["clip_score"] = "the cutoff computed over the whole pool again"
    else:
        skipped["clip_score"] = "no clip_score_threshold or clip_score_top_fraction set"
    lap("clip_score_cutoff")
    semantic_frame = None if semantic is None else pd.DataFrame({"id": semantic})
    per_shard = zip(_per_shard(exact, len(files)), _per_shard(perceptual, len(files)),
                    _per_shard(semantic_frame, len(files)))
    shared_displaced = dask.delayed(displaced, pure=True)
    updated = {name for name, mode in modes.items() if mode == "incremental"}
    counts = [dask.delayed(shard_decisions, pure=True)(
        store, f, catalog.filter_decisions(folder, s), number, config, shard_exact, shard_perceptual,
        None if shard_semantic is None else shard_semantic["id"].to_numpy(), cutoff,
        None if old is None else {"decisions": old, "incremental": updated, "displaced": shared_displaced})
        for number, (s, f, old, (shard_exact, shard_perceptual, shard_semantic))
        in enumerate(zip(shard_ids, files, old_decisions, per_shard))]
    while len(counts) > 1:
        counts = [dask.delayed(combine_counts, pure=True)(*counts[i:i + REDUCE_FANIN])
                  for i in range(0, len(counts), REDUCE_FANIN)]
    total = compute(client, counts)[0]
    lap("decisions")
    if "nsfw_image" not in total["names"]:
        skipped["nsfw_image"] = "no nsfw_image_head configured: image NSFW was NOT checked"
    if "eval_dedup" not in total["names"]:
        skipped["eval_dedup"] = "no evaluation sets given (eval_tasklist)"
    decisions = {s: store.uri(catalog.filter_decisions(folder, s)) for s in shard_ids}
    report = filter_report(total, skipped, cutoff)
    stats = {"removed_by": report["removed_by"], "skipped": report["skipped"], "seconds": seconds}
    outputs = {"folder": store.uri(folder), "decisions": decisions}
    if catalog.store.exists(catalog.filter_semdedup_centroids(folder)):
        outputs["semdedup_centroids"] = store.uri(catalog.filter_semdedup_centroids(folder))
    if previous is not None:
        report["incremental"] = stats["incremental"] = incremental_section(
            previous, store.read_json(store.relative(previous["outputs"]["report"])), shard_ids, old_shards,
            embeddings, modes, total, cutoff)
        inputs = {**inputs, "previous_filters": previous["content_hash"]}
    report_json, report_png = catalog.filter_report(folder)
    manifest = Manifest(
        stage="filter", name=embeddings.manifest["name"], store=store.root, config=config.to_dict(),
        code_version=stage_code_version(), inputs=inputs,
        outputs={**outputs, "report": store.write_json(report_json, report),
                 "plot": store.write_bytes(report_png, report_plot(report))},
        rows={"samples": report["samples"], "kept": report["kept"]}, stats=stats)
    return catalog.publish(folder, manifest)
