"""Run the filters over an embedded pool: row-wise per shard, then pool-wide, then the report.

In:  the store, the per-shard embedding outputs (:mod:`tasks.embed.run`), a
     :class:`~tasks.filters.config.FilterConfig`, and optionally the evaluation images' embeddings.
Out, under the run folder ``filters/<pool>/<key>/``:

- ``rows/<shard>.parquet``: the row-wise decisions of one shard (basic, NSFW text and image,
  eval-set dedup) with the columns the pool-wide filters need;
- ``decisions/<shard>.parquet``: every sample of the shard, row-aligned with its embeddings, with
  ``keep_<filter>`` and ``reason_<filter>`` for every filter that ran and the overall ``keep``;
- ``report.json`` and ``report.png``: samples removed per filter and reason, and how the filters
  overlap. Filters that did not run are listed as skipped, with why.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from tasks.common.errors import InputError
from tasks.common.plots import png_bytes, subplots
from tasks.common.store import Store
from tasks.filters.basic import basic_decisions
from tasks.filters.clip_score import clip_score_cutoff, clip_score_decisions
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import exact_duplicates, perceptual_duplicates
from tasks.filters.eval_dedup import eval_dedup_decisions
from tasks.filters.nsfw import load_image_head, nsfw_image_decisions, nsfw_text_decisions
from tasks.filters.semdedup import semantic_duplicates

FILTER_VERSION = 3  # bump when a change alters the decisions
CARRIED = ["uid", "key", "text", "clip_score", "embed_ok", "embed_reason", "phash", "thumb", "sha256", "width",
           "height", "original_width", "original_height"]


def rowwise_filters(store: Store, embed_parquet: str, config: FilterConfig, out_folder: str,
                    eval_embeddings: str | None = None) -> str:
    """Row-wise decisions of one embedded shard; returns the rows file (skips work already done)."""
    name = embed_parquet.rsplit("/", 1)[-1].removesuffix(".parquet")
    target = f"{out_folder}/rows/{name}.parquet"
    if store.exists(target):
        return target
    with store.open(embed_parquet) as handle:
        table = pd.read_parquet(handle)
    images = store.read_npy(embed_parquet.removesuffix(".parquet") + ".img.npy").astype(np.float32)
    parts = [table[CARRIED], basic_decisions(table, config), nsfw_text_decisions(table["text"], config)]
    head = load_image_head(config.nsfw_image_head) if config.nsfw_image_head else None
    image_nsfw = nsfw_image_decisions(images, table.index, config, head, table["embed_ok"].to_numpy())
    if image_nsfw is not None:
        parts.append(image_nsfw)
    if eval_embeddings:
        parts.append(eval_dedup_decisions(images, store.read_npy(eval_embeddings).astype(np.float32), table.index,
                                          config.eval_dedup_threshold, table["embed_ok"].to_numpy()))
    store.write_bytes(target, pd.concat(parts, axis=1).to_parquet(index=False))
    return target


def filter_names(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("keep_") for c in frame.columns if c.startswith("keep_")]


def poolwide_filters(store: Store, rows_files: list[str], config: FilterConfig, out_folder: str,
                     embeddings_folder: str = "") -> dict:
    """Dedup, SemDeDup and CLIP score over the whole pool, the overall decision per sample, and the report.

    SemDeDup reads the image embeddings of every shard (``<embeddings_folder>/<shard>.img.npy``)
    into this process: float16, so 1M samples of a 768-d model take 1.5 GB.
    """
    if store.exists(f"{out_folder}/report.json") and store.exists(f"{out_folder}/report.png"):
        return store.read_json(f"{out_folder}/report.json")  # this exact run finished before
    frames = []
    for rows_file in rows_files:
        with store.open(rows_file) as handle:
            frame = pd.read_parquet(handle)
        frame["_shard"] = rows_file.rsplit("/", 1)[-1].removesuffix(".parquet")
        frames.append(frame)
    pool = pd.concat(frames, ignore_index=True)
    decodable = (pool["embed_reason"] != "undecodable").to_numpy()
    skipped = {}
    if config.exact_dedup:
        pool = pool.join(exact_duplicates(pool["uid"], pool["sha256"]))
    if config.phash_dedup:
        thumbs = np.frombuffer(b"".join(pool["thumb"]), dtype=np.uint8).reshape(len(pool), -1)
        pool = pool.join(perceptual_duplicates(pool["uid"], pool["phash"], config.phash_max_distance, decodable,
                                               thumbs, config.phash_max_color_distance))
    if config.semdedup_threshold is not None:
        if not embeddings_folder:
            raise InputError("filters semdedup_threshold: set, but no embeddings folder was given")
        embeddings = np.concatenate([store.read_npy(f"{embeddings_folder}/{shard}.img.npy")
                                     for shard in pool["_shard"].unique()]).astype(np.float32)
        clusters = config.semdedup_clusters or max(1, len(pool) // 1000)
        pool = pool.join(semantic_duplicates(embeddings, pool["embed_ok"].to_numpy(dtype=bool), pool.index, clusters,
                                             config.semdedup_threshold))
    else:
        skipped["semdedup"] = "no semdedup_threshold set"
    cutoff = clip_score_cutoff(pool["clip_score"].to_numpy(dtype=float), config.clip_score_threshold,
                               config.clip_score_top_fraction)
    if cutoff is not None:
        pool = pool.join(clip_score_decisions(pool["clip_score"], cutoff))
    else:
        skipped["clip_score"] = "no clip_score_threshold or clip_score_top_fraction set"
    if "keep_nsfw_image" not in pool:
        skipped["nsfw_image"] = "no nsfw_image_head configured: image NSFW was NOT checked"
    if "keep_eval_dedup" not in pool:
        skipped["eval_dedup"] = "no evaluation sets given (eval_tasklist)"
    names = filter_names(pool)
    keep = pool[[f"keep_{n}" for n in names]].all(axis=1)
    pool["keep"] = keep & pool["embed_ok"]
    pool["reason_embed"] = pool["embed_reason"]
    for shard, part in pool.groupby("_shard", sort=False):
        store.write_bytes(f"{out_folder}/decisions/{shard}.parquet",
                          part.drop(columns=["_shard", "thumb"]).to_parquet(index=False))
    report = filter_report(pool, names, skipped, cutoff)
    store.write_json(f"{out_folder}/report.json", report)
    store.write_bytes(f"{out_folder}/report.png", report_plot(report))
    return report


def filter_report(pool: pd.DataFrame, names: list[str], skipped: dict, clip_cutoff: float | None) -> dict:
    removed = pd.DataFrame({n: ~pool[f"keep_{n}"].to_numpy() for n in names})
    removed["embed"] = ~pool["embed_ok"].to_numpy()
    reasons = {}
    for name in names + ["embed"]:
        column = pool[f"reason_{name}"].astype(str)
        split = column[column != ""].str.split(",").explode()
        reasons[name] = {k: int(v) for k, v in split.value_counts().sort_index().items()}
    overlap = removed.T.astype(int) @ removed.astype(int)
    return {
        "samples": int(len(pool)), "kept": int(pool["keep"].sum()),
        "removed_by": {name: int(removed[name].sum()) for name in removed.columns},
        "removed_only_by": {name: int((removed[name] & (removed.sum(axis=1) == 1)).sum()) for name in removed.columns},
        "reasons": reasons,
        "overlap": {a: {b: int(overlap.loc[a, b]) for b in overlap.columns} for a in overlap.index},
        "skipped": skipped, "clip_score_cutoff": clip_cutoff,
    }


def report_plot(report: dict) -> bytes:
    names = list(report["removed_by"])
    fig, (bars, heat) = subplots(1, 2, figsize=(12, 4.5))
    bars.barh(names, [report["removed_by"][n] for n in names], color="#888", label="removed")
    bars.barh(names, [report["removed_only_by"][n] for n in names], color="#c33", label="removed by this filter only")
    bars.set_xlabel("samples")
    bars.set_title(f"{report['samples'] - report['kept']} of {report['samples']} samples removed")
    bars.legend(loc="lower right")
    matrix = np.array([[report["overlap"][a][b] for b in names] for a in names])
    heat.imshow(np.log1p(matrix), cmap="Reds")
    heat.set_xticks(range(len(names)), names, rotation=60, ha="right")
    heat.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            heat.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7)
    heat.set_title("samples removed by both filters")
    return png_bytes(fig)
