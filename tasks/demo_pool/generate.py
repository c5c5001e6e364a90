"""Plan and write the demo web pool.

In:  a :class:`DemoPoolConfig` (size, seed, long-tail exponent, rates of every planted defect)
     and a web root folder.
Out: in the web root, ``files/`` (the image bytes), ``routes.json`` (URL path -> how the server
     answers: a file, 404, a hang, truncated bytes, or an HTML page), ``pool.parquet`` (the pool
     index with relative ``path`` instead of ``url``), ``truth.parquet`` (true concept and
     planted defects per uid; only evaluation may read it) and ``generated.json`` (the config and
     content hashes, written last: its presence means the web root is complete).
     :func:`pool_index_for` turns ``pool.parquet`` into a DataComp-style index with absolute URLs.

Everything is a function of the config: the same seed gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from tasks.common.errors import InputError
from tasks.common.hashing import hash_json
from tasks.demo_pool import captions
from tasks.demo_pool.concepts import CONCEPTS
from tasks.demo_pool.render import render_concept

URL_FAILURES = ("http_404", "timeout", "truncated", "not_an_image")
# The status img2dataset gives each planted URL failure.
EXPECTED_STATUS = {"": "success", "http_404": "failed_to_download", "timeout": "failed_to_download",
                   "truncated": "failed_to_download", "not_an_image": "failed_to_resize"}
SITES = ("cdn-shop", "img-blog", "media-news", "static-forum", "photos-social", "assets-wiki")
CAPTION_KINDS = ("named", "short", "foreign", "junk", "mismatched")
GENERATOR_VERSION = 2
LEAKED_EVAL_IMAGES = 3  # leaks copy classification images 0..2 of a concept (any eval set with >= 3 per class)


@dataclass(frozen=True)
class DemoPoolConfig:
    """What to generate. Rates are shares of ``n_samples``."""

    n_samples: int = 20_000
    seed: int = 0
    n_concepts: int = 100
    zipf_exponent: float = 1.1
    min_per_concept: int = 12
    exact_dup_rate: float = 0.03
    near_dup_rate: float = 0.03
    unsafe_rate: float = 0.02
    too_small_rate: float = 0.02
    extreme_aspect_rate: float = 0.02
    http_404_rate: float = 0.02
    timeout_rate: float = 0.003
    truncated_rate: float = 0.005
    not_an_image_rate: float = 0.005
    eval_leak_rate: float = 0.005
    short_caption_rate: float = 0.04
    foreign_caption_rate: float = 0.05
    junk_caption_rate: float = 0.07
    mismatched_caption_rate: float = 0.04
    png_rate: float = 0.1

    def validate(self) -> None:
        if self.n_samples < 100:
            raise InputError(f"n_samples: at least 100 samples are needed, got {self.n_samples}")
        if not 2 <= self.n_concepts <= len(CONCEPTS):
            raise InputError(f"n_concepts: must be between 2 and {len(CONCEPTS)}, got {self.n_concepts}")
        rates = {k: v for k, v in asdict(self).items() if k.endswith("_rate")}
        for name, value in rates.items():
            if not 0 <= value < 0.5:
                raise InputError(f"{name}: must be in [0, 0.5), got {value}")
        if self.n_concepts * self.min_per_concept > self.n_samples // 2:
            raise InputError(
                f"min_per_concept: {self.n_concepts} concepts x {self.min_per_concept} exceeds half of "
                f"n_samples={self.n_samples}")


def concept_frequencies(config: DemoPoolConfig) -> np.ndarray:
    """Zipf shares over concept ids: the web concepts hold the top ranks, the rest are shuffled by seed."""
    rng = np.random.default_rng([config.seed, 7])
    ids = np.arange(config.n_concepts)
    web = ids[ids < 4]
    order = np.concatenate([web, rng.permutation(ids[ids >= 4])])
    shares = np.empty(config.n_concepts)
    shares[order] = np.arange(1, config.n_concepts + 1, dtype=float) ** -config.zipf_exponent
    return shares / shares.sum()


def _allocate(total: int, shares: np.ndarray, minimum: int) -> np.ndarray:
    """Integer counts summing to ``total``: ``minimum`` each, the rest by ``shares`` (largest remainder)."""
    spare = total - minimum * len(shares)
    exact = spare * shares
    counts = np.floor(exact).astype(int)
    counts[np.argsort(-(exact - counts), kind="stable")[:spare - counts.sum()]] += 1
    return counts + minimum


def plan_pool(config: DemoPoolConfig) -> pd.DataFrame:
    """One row per sample with everything needed to render it and to write the truth."""
    config.validate()
    rng = np.random.default_rng([config.seed, 0])
    n = config.n_samples
    n_exact = int(round(n * config.exact_dup_rate))
    n_near = int(round(n * config.near_dup_rate))
    n_base = n - n_exact - n_near

    counts = _allocate(n_base, concept_frequencies(config), config.min_per_concept)
    concept = rng.permutation(np.repeat(np.arange(config.n_concepts), counts))

    base = pd.DataFrame({"concept_id": concept, "source": np.arange(n_base)})
    base["url_failure"] = ""
    base["dup_kind"] = ""
    base["shape_kind"] = "normal"
    free = rng.permutation(n_base)
    cursor = 0

    def take(count: int) -> np.ndarray:
        nonlocal cursor
        chosen = free[cursor:cursor + count]
        cursor += count
        return chosen

    for failure in URL_FAILURES:
        base.loc[take(int(round(n * getattr(config, f"{failure}_rate")))), "url_failure"] = failure
    base.loc[take(int(round(n * config.too_small_rate))), "shape_kind"] = "too_small"
    base.loc[take(int(round(n * config.extreme_aspect_rate))), "shape_kind"] = "extreme_aspect"
    base["eval_leak"] = -1
    base["eval_leak_kind"] = ""
    leaks = take(int(round(n * config.eval_leak_rate)))
    base.loc[leaks, "eval_leak"] = rng.integers(0, LEAKED_EVAL_IMAGES, size=len(leaks))
    base.loc[leaks, "eval_leak_kind"] = np.array(["exact", "reencode"])[rng.integers(0, 2, size=len(leaks))]
    sources = take(n_exact + n_near)  # clean, servable, normal-sized images

    near_kinds = np.array(["reencode", "resize", "crop"])
    dups = pd.DataFrame({
        "concept_id": base["concept_id"].to_numpy()[sources],
        "source": sources,
        "url_failure": "",
        "dup_kind": np.concatenate([np.full(n_exact, "exact"), near_kinds[rng.integers(3, size=n_near)]]),
        "shape_kind": "normal",
        "eval_leak": -1,
        "eval_leak_kind": "",
    })
    plan = pd.concat([base, dups], ignore_index=True)

    # Sizes: normal images have a short side of 64-192 px and a mild aspect ratio.
    short_side = rng.integers(64, 193, size=len(plan))
    aspect = rng.uniform(0.75, 1.33, size=len(plan))
    width = np.where(aspect >= 1, np.round(short_side * aspect), short_side).astype(int)
    height = np.where(aspect >= 1, short_side, np.round(short_side / aspect)).astype(int)
    small = plan["shape_kind"].to_numpy() == "too_small"
    width[small] = rng.integers(16, 41, size=small.sum())
    height[small] = rng.integers(16, 41, size=small.sum())
    extreme = plan["shape_kind"].to_numpy() == "extreme_aspect"
    long_side = rng.integers(260, 361, size=extreme.sum())
    # thin but not too small (>= 56 px): an extreme shape is its own defect, not also a small image
    thin_side = np.clip((long_side / rng.uniform(3.5, 6.0, size=extreme.sum())).astype(int), 56,
                        (long_side / 3.5).astype(int))
    horizontal = rng.random(extreme.sum()) < 0.5
    width[extreme] = np.where(horizontal, long_side, thin_side)
    height[extreme] = np.where(horizontal, thin_side, long_side)
    plan["width"], plan["height"] = width, height
    plan["png"] = (rng.random(len(plan)) < config.png_rate) & (plan["eval_leak"] < 0)  # leaks stay JPEG
    plan["quality"] = rng.integers(75, 96, size=len(plan))

    kind_shares = np.array([config.short_caption_rate, config.foreign_caption_rate,
                            config.junk_caption_rate, config.mismatched_caption_rate])
    kinds = np.array(CAPTION_KINDS)[
        np.searchsorted(np.cumsum(np.concatenate([[1 - kind_shares.sum()], kind_shares])), rng.random(len(plan)),
                        side="right").clip(0, 4)]
    plan["caption_kind"] = kinds
    offset = rng.integers(1, config.n_concepts, size=len(plan))
    plan["caption_concept_id"] = np.where(kinds == "mismatched", (plan["concept_id"] + offset) % config.n_concepts,
                                          np.where(kinds == "junk", -1, plan["concept_id"]))
    plan["unsafe_caption"] = rng.random(len(plan)) < config.unsafe_rate
    plan["reuse_source_caption"] = (plan["dup_kind"] != "") & (rng.random(len(plan)) < 0.5)
    reuse = plan["reuse_source_caption"].to_numpy()
    source_rows = plan.loc[reuse, "source"].to_numpy()  # base rows come first, so source == row here
    plan.loc[reuse, ["caption_kind", "caption_concept_id"]] = plan.loc[
        source_rows, ["caption_kind", "caption_concept_id"]].to_numpy()

    order = rng.permutation(len(plan))  # the pool is a random mix; row i of the index is order[i]
    plan = plan.iloc[order].reset_index().rename(columns={"index": "plan_row"})
    plan["uid"] = [hashlib.md5(f"demo-pool-{config.seed}-{i}".encode()).hexdigest() for i in plan["plan_row"]]
    token = [hashlib.sha1(f"{u}-{config.seed}".encode()).hexdigest()[:20] for u in plan["uid"]]
    site = np.array(SITES)[rng.integers(len(SITES), size=len(plan))]
    ext = np.where(plan["png"], "png", "jpg")
    plan["file"] = [f"{t}.{e}" for t, e in zip(token, ext)]
    plan["path"] = [f"/{s}/{t[:2]}/{t}.{e}" for s, t, e in zip(site, token, ext)]
    return plan


def _caption_for(row, seed: int) -> str:
    rng = np.random.default_rng([seed, 2, int(row.plan_row)])
    kind = row.caption_kind
    if kind == "junk":
        text = captions.junk_caption(rng)
    elif kind == "short":
        text = captions.short_caption(CONCEPTS[row.concept_id], rng)
    elif kind == "foreign":
        text = captions.foreign_caption(CONCEPTS[row.concept_id], rng)
    else:
        text = captions.named_caption(CONCEPTS[row.caption_concept_id], rng)
    return text


def _encode(image: Image.Image, png: bool, quality: int) -> bytes:
    buffer = io.BytesIO()
    if png:
        image.save(buffer, format="PNG", optimize=False)
    else:
        image.save(buffer, format="JPEG", quality=int(quality))
    return buffer.getvalue()


def _render_base_chunk(args) -> list[tuple[int, str, int, int]]:
    """Render base images (not duplicates) and write them; return (plan_row, sha256, width, height)."""
    from tasks.demo_pool.eval_sets import classification_image

    rows, seed, files_dir = args
    out = []
    for plan_row, concept_id, width, height, png, quality, file, leak, leak_kind in rows:
        rng = np.random.default_rng([seed, 1, int(plan_row)])
        if leak >= 0:  # a copy of an evaluation image, as found on the web
            data = classification_image(seed, int(concept_id), int(leak))
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if leak_kind == "reencode":
                data = _encode(image.convert("RGB"), False, int(rng.integers(60, 75)))
        else:
            data = _encode(render_concept(CONCEPTS[concept_id], (int(width), int(height)), rng), png, quality)
        with open(os.path.join(files_dir, file), "wb") as handle:
            handle.write(data)
        out.append((int(plan_row), hashlib.sha256(data).hexdigest(), int(width), int(height)))
    return out


def _near_duplicate(source: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, int, int]:
    image = Image.open(io.BytesIO(source)).convert("RGB")
    if kind == "resize":
        scale = max(rng.uniform(0.6, 0.85), 60 / min(image.size))  # smaller, but never "too small"
        image = image.resize((max(16, int(image.width * scale)), max(16, int(image.height * scale))), Image.BILINEAR)
    elif kind == "crop":
        keep = rng.uniform(0.86, 0.95)
        w, h = int(image.width * keep), int(image.height * keep)
        x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
        image = image.crop((x, y, x + w, y + h))
    quality = int(rng.integers(55, 75)) if kind == "reencode" else int(rng.integers(80, 95))
    return _encode(image, False, quality), image.width, image.height


def generate_demo_pool(config: DemoPoolConfig, web_root: str | os.PathLike, client=None) -> dict:
    """Write the web root for ``config`` (skipped if an identical one is already complete).

    Images are rendered on the Dask ``client``'s workers when one is given (they must see the
    web root's folder), else in this process; the bytes are the same either way.
    Returns the content of ``generated.json``: the config, counts and content hashes.
    """
    root = Path(web_root)
    marker = root / "generated.json"
    config_hash = hash_json({"config": asdict(config), "version": GENERATOR_VERSION})
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("config_hash") == config_hash:
            return done
    if root.exists():
        shutil.rmtree(root)
    files_dir = root / "files"
    files_dir.mkdir(parents=True)

    plan = plan_pool(config)
    plan["text"] = [_caption_for(row, config.seed) for row in plan.itertuples()]
    # A duplicate reusing its source's caption: look the source's caption up by base index.
    base_rows = plan[plan["dup_kind"] == ""].set_index("source")
    reuse = plan["reuse_source_caption"].to_numpy()
    plan.loc[reuse, "text"] = base_rows.loc[plan.loc[reuse, "source"], "text"].to_numpy()
    unsafe = plan.index[plan["unsafe_caption"]]
    plan.loc[unsafe, "text"] = [captions.add_unsafe_term(plan.at[i, "text"], np.random.default_rng(
        [config.seed, 4, int(plan.at[i, "plan_row"])])) for i in unsafe]

    base = plan[(plan["dup_kind"] == "") & plan["url_failure"].isin(["", "truncated", "not_an_image"])]
    columns = ["plan_row", "concept_id", "width", "height", "png", "quality", "file", "eval_leak", "eval_leak_kind"]
    records = list(base[columns].itertuples(index=False, name=None))
    parts = 4 * (len(client.scheduler_info()["workers"]) if client is not None else 1)
    jobs = [(records[i::parts], config.seed, str(files_dir)) for i in range(parts) if records[i::parts]]
    if client is not None:
        results = [pair for part in client.gather(client.map(_render_base_chunk, jobs, pure=False)) for pair in part]
    else:
        results = [pair for job in jobs for pair in _render_base_chunk(job)]
    rendered = pd.DataFrame(results, columns=["plan_row", "sha256", "width", "height"]).set_index("plan_row")
    plan["sha256"] = plan["plan_row"].map(rendered["sha256"])
    for column in ("width", "height"):  # leaked evaluation images keep their own size
        plan[column] = plan["plan_row"].map(rendered[column]).fillna(plan[column]).astype(int)

    # Duplicates: exact ones serve the source's file; near ones are transformed copies.
    by_source = plan[plan["dup_kind"] == ""].set_index("source")
    dups = plan.index[plan["dup_kind"] != ""]
    for i in dups:
        row = plan.loc[i]
        src = by_source.loc[row["source"]]
        if row["dup_kind"] == "exact":
            plan.loc[i, ["file", "sha256", "width", "height", "png"]] = [
                src["file"], src["sha256"], src["width"], src["height"], src["png"]]
            continue
        data, w, h = _near_duplicate((files_dir / src["file"]).read_bytes(), row["dup_kind"],
                                     np.random.default_rng([config.seed, 3, int(row["plan_row"])]))
        name = row["file"].rsplit(".", 1)[0] + ".jpg"
        (files_dir / name).write_bytes(data)
        plan.loc[i, ["file", "sha256", "width", "height", "png"]] = [name, hashlib.sha256(data).hexdigest(), w, h, False]
    plan["dup_of"] = ""
    plan.loc[dups, "dup_of"] = by_source.loc[plan.loc[dups, "source"], "uid"].to_numpy()
    # A near duplicate's URL ends in .jpg like its bytes.
    plan["path"] = [p.rsplit(".", 1)[0] + "." + f.rsplit(".", 1)[1] for p, f in zip(plan["path"], plan["file"])]

    # Failed URLs: 404 and hangs have no file at all.
    gone = plan["url_failure"].isin(["http_404", "timeout"]).to_numpy()
    plan.loc[gone, "file"] = ""
    kinds = np.where(plan["url_failure"] == "", "file", plan["url_failure"])
    routes = {path: [kind, file] for path, kind, file in zip(plan["path"], kinds, plan["file"])}
    (root / "routes.json").write_text(json.dumps(routes, sort_keys=True))

    index = plan[["uid", "path", "text", "width", "height", "sha256"]].rename(
        columns={"width": "original_width", "height": "original_height"})
    index.to_parquet(root / "pool.parquet", index=False)

    truth = pd.DataFrame({
        "uid": plan["uid"],
        "concept_id": plan["concept_id"].astype(int),
        "concept": [CONCEPTS[c].name for c in plan["concept_id"]],
        "caption_kind": plan["caption_kind"],
        "caption_concept_id": plan["caption_concept_id"].astype(int),
        "unsafe_caption": plan["unsafe_caption"].astype(bool),
        "url_failure": plan["url_failure"],
        "expected_status": plan["url_failure"].map(EXPECTED_STATUS),
        "dup_kind": plan["dup_kind"],
        "dup_of": plan["dup_of"],
        "width": plan["width"].astype(int),
        "height": plan["height"].astype(int),
        "too_small": (plan["shape_kind"] == "too_small").to_numpy(),
        "extreme_aspect": (plan["shape_kind"] == "extreme_aspect").to_numpy(),
        "image_format": np.where(plan["png"].astype(bool), "png", "jpeg"),
        "eval_leak": (plan["eval_leak"] >= 0).to_numpy(),
        "eval_leak_image": np.where(plan["eval_leak"] >= 0, plan["concept_id"].astype(str) + ":" +
                                    plan["eval_leak"].astype(str), ""),
        "eval_leak_kind": plan["eval_leak_kind"],
    })
    truth.to_parquet(root / "truth.parquet", index=False)

    summary = {
        "config": asdict(config),
        "config_hash": config_hash,
        "n_samples": int(len(plan)),
        "index_sha256": hashlib.sha256((root / "pool.parquet").read_bytes()).hexdigest(),
        "truth_sha256": hashlib.sha256((root / "truth.parquet").read_bytes()).hexdigest(),
        "routes_sha256": hashlib.sha256((root / "routes.json").read_bytes()).hexdigest(),
        "planted": planted_counts(truth),
    }
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    os.replace(tmp, marker)
    return summary


def planted_counts(truth: pd.DataFrame) -> dict[str, int]:
    """How many of each defect the truth file holds."""
    counts = {f"url_{k}": int((truth["url_failure"] == k).sum()) for k in URL_FAILURES}
    counts.update({f"dup_{k}": int((truth["dup_kind"] == k).sum()) for k in ("exact", "reencode", "resize", "crop")})
    counts.update({f"caption_{k}": int((truth["caption_kind"] == k).sum()) for k in CAPTION_KINDS})
    counts["unsafe_caption"] = int(truth["unsafe_caption"].sum())
    counts["too_small"] = int(truth["too_small"].sum())
    counts["extreme_aspect"] = int(truth["extreme_aspect"].sum())
    counts["eval_leak"] = int(truth["eval_leak"].sum())
    counts["expected_success"] = int((truth["expected_status"] == "success").sum())
    return counts


def pool_index_for(web_root: str | os.PathLike, base_url: str) -> pd.DataFrame:
    """The DataComp-style pool index (uid, url, text, original size, sha256) for a served web root."""
    index = pd.read_parquet(Path(web_root) / "pool.parquet")
    index.insert(1, "url", base_url.rstrip("/") + index.pop("path"))
    return index
