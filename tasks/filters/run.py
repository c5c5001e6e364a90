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
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from tasks.common.catalog import Catalog, EmbeddedShard, EmbeddingRun
from tasks.common.hashing import code_version
from tasks.common.manifest import Manifest
from tasks.common.plots import png_bytes, subplots
from tasks.common.store import Store
from tasks.filters.basic import basic_decisions
from tasks.filters.clip_score import clip_score_cutoff, clip_score_decisions
from tasks.filters.config import FilterConfig
from tasks.filters.dedup import exact_duplicates, perceptual_duplicates
from tasks.filters.eval_dedup import eval_dedup_decisions
from tasks.filters.nsfw import load_image_head, nsfw_image_decisions, nsfw_text_decisions
from tasks.filters.semdedup import semantic_duplicates

FILTER_VERSION = 4  # bump when a change alters the decisions
CARRIED = ["uid", "key", "text", "clip_score", "embed_ok", "embed_reason", "phash", "thumb", "sha256", "width",
           "height", "original_width", "original_height"]


def stage_code_version() -> str:
    return code_version("filter", FILTER_VERSION)


def rowwise_filters(store: Store, shard: EmbeddedShard, config: FilterConfig, target: str,
                    eval_embeddings: str | None = None) -> str:
    """Row-wise decisions of one embedded shard into ``target``; returns it (skips work already done)."""
    if store.exists(target):
        return target
    with store.open(store.relative(shard.parquet)) as handle:
        table = pd.read_parquet(handle)
    images = store.read_npy(store.relative(shard.image_embeddings)).astype(np.float32)
    parts = [table[CARRIED], basic_decisions(table, config), nsfw_text_decisions(table["text"], config)]
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


def filter_names(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("keep_") for c in frame.columns if c.startswith("keep_")]


def poolwide_filters(catalog: Catalog, embeddings: EmbeddingRun, rows_files: dict[str, str], config: FilterConfig,
                     folder: str, inputs: dict) -> dict:
    """Dedup, SemDeDup and CLIP score over the whole pool, the overall decision per sample, the report,
    and last the stage's manifest (returned; the existing one when this run finished before).

    ``rows_files`` maps every shard id to its row-wise decisions; ``inputs`` are the content hashes
    recorded in the manifest. SemDeDup reads the image embeddings of every shard into this
    process: float16, so 1M samples of a 768-d model take 1.5 GB.
    """
    store = catalog.store
    done = catalog.finished(folder)
    if done is not None:
        return done
    frames = []
    for shard_id, rows_file in rows_files.items():
        with store.open(rows_file) as handle:
            frame = pd.read_parquet(handle)
        frame["_shard"] = shard_id
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
        matrices = {shard.shard_id: shard.image_embeddings for shard in embeddings.shards}
        embeddings_matrix = np.concatenate([store.read_npy(store.relative(matrices[shard]))
                                            for shard in pool["_shard"].unique()]).astype(np.float32)
        clusters = config.semdedup_clusters or max(1, len(pool) // 1000)
        pool = pool.join(semantic_duplicates(embeddings_matrix, pool["embed_ok"].to_numpy(dtype=bool), pool.index, clusters,
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
    decisions = {}
    for shard, part in pool.groupby("_shard", sort=False):
        decisions[shard] = store.write_bytes(catalog.filter_decisions(folder, shard),
                                             part.drop(columns=["_shard", "thumb"]).to_parquet(index=False))
    report = filter_report(pool, names, skipped, cutoff)
    report_json, report_png = catalog.filter_report(folder)
    manifest = Manifest(
        stage="filter", name=embeddings.manifest["name"], store=store.root, config=config.to_dict(),
        code_version=stage_code_version(), inputs=inputs,
        outputs={"folder": store.uri(folder), "decisions": decisions,
                 "report": store.write_json(report_json, report),
                 "plot": store.write_bytes(report_png, report_plot(report))},
        rows={"samples": report["samples"], "kept": report["kept"]},
        stats={"removed_by": report["removed_by"], "skipped": report["skipped"]})
    return catalog.publish(folder, manifest)


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
