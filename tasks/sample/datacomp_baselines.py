"""DataComp's filtering baselines as one recipe step, ``{"step": "datacomp", "baseline": NAME, ...}``.

In:  the step's settings (:data:`BASELINES` holds each baseline's settings and defaults), the
     candidate mask over the pool table's rows, and what a baseline reads: the filter run's
     decisions per shard (``keep_basic``, ``reason_basic``, ``text``, the CLIP score columns), a
     cluster tree (:class:`~tasks.sample.run.TreeView`) and a file of target image embeddings.
Out: :func:`datacomp_step` narrows the candidates to those the baseline keeps and returns the
     step's figures (the rule, the threshold, the settings used, what each condition removed).

The baselines (DataComp, Gadre et al. 2023, section 4.1 and ``baselines/apply_filter.py`` of
github.com/mlfoundations/datacomp), and how this project computes them:

- ``no_filter``: every candidate.
- ``basic``: English caption, more than 2 words, more than 5 characters, smaller side at least
  200 px, aspect ratio at most 3: the filter run's ``keep_basic``. The step checks that the run used
  DataComp's settings (``english_only``, ``min_words`` 3, ``min_chars`` 6, ``min_image_side`` 200,
  ``max_aspect_ratio`` 3) and judged every sample's size (the filter skips the size rules for samples
  without image sizes, and its manifest says so), and fails naming what differs; ``"strict": false``
  uses the run's decisions anyway and lists its settings in the figures. The language detector differs: DataComp takes
  fastText's top language; this project's basic filter calls a caption English when langid gives
  English a probability of at least ``english_min_probability`` (see :mod:`tasks.filters.config`).
  The figures always state that rule.
- ``clip_score``: the image-text cosine of a CLIP model, ``score`` ``"l14"`` (column
  ``clip_l14_score``, OpenAI ViT-L/14), ``"b32"`` (``clip_b32_score``, ViT-B/32; both come with
  pools imported from DataComp's metadata) or ``"pool"`` (``clip_score``, the pool's own embedder),
  either at least a ``threshold`` or in the top ``fraction``. ``clip_l14_30`` is L/14, top 30%;
  ``laion2b`` is LAION-2B's filter: B/32 score at least 0.28 and an English caption (LAION used
  gcld3 for the language; here, the basic filter's English rule).
- ``text_based``: an English caption that names an ImageNet-1k class (see "Text matching" below).
- ``image_based``: captions passing DataComp's caption filter (English, at least 2 words, more than
  5 characters), whose image is in a k-means cluster that is the nearest cluster of at least one
  target image (see "Image-based" below).
- ``image_based_clip_l14_30``: the intersection: image-based and L/14 score in the top 30% of the
  whole pool. DataComp's code (``load_uids_with_image_filter`` with a fraction) takes the 30% cutoff
  over the whole pool's scores and then applies the caption filter and the clusters, so the cutoff
  here is the whole pool's too (``over: "pool"``), not the image-based survivors'. DataComp's table 3
  has it best at the medium, large and xlarge scales; at the small scale, CLIP L/14 30% alone is best.

Top fraction (``fraction``), over ``over``: ``"pool"`` (every sample of the pool with a finite
score, DataComp's definition, whatever the earlier steps kept) or ``"candidates"`` (those left at
this step); samples without a finite score never pass. ``ties``:

- ``"exact"`` (default): exactly ``k = floor(N * fraction)`` samples of the N scored ones (the
  fraction taken as the decimal written, so 0.3 of 10 is 3): every score above the k-th largest,
  then of the samples whose score equals it, as many as are still needed, in pool row order (shard
  order, then row order within the shard). The same snapshot always gives the same subset.
- ``"datacomp"``: DataComp's code: the cutoff is the ``int(N * fraction) + 1``-th largest score and
  every sample at or above it is kept (one more than ``int(N * fraction)``, plus any ties).

The cutoff is found by the project's exact distributed selection
(:func:`tasks.filters.clip_score.order_statistic`: per-shard radix histograms summed on the
workers), never by gathering the scores; ``threshold`` keeps a score at least equal to it, as
DataComp's ``>=``.

English: a caption is English when ``not_english`` is not among the comma-separated reasons of
``reason_basic`` (the basic filter's language rule alone; its other rules do not count). A filter
run made with ``english_only: false`` has no language rule, and a step that needs one fails.

Text matching: the entries (default: the shipped ``imagenet1k_classes.txt``) are matched with the
MetaCLIP matcher (:class:`~tasks.metaclip.matching.EntryMatcher`): an entry matches when it occurs
in the normalised caption bounded by spaces, i.e. as whole words (``,.;:?!``` are spaced out first),
so "cat" matches "a cat, sleeping" but not "concatenate" or "cats". With ``lowercase`` (default)
captions and entries are lower-cased first. DataComp instead splits the caption on whitespace and
looks every single word up in WordNet (lower-cased, with WordNet's lemmatiser, so "Dogs" counts as
"dog"), keeping the caption when the word's first synset is an ImageNet synset (its code uses
ImageNet-21k; the paper also reports ImageNet-1k). So ours matches multi-word class names as
phrases ("great white shark"), does not lemmatise (plurals match only when listed), does not
disambiguate senses (every "crane" counts), and splits punctuation off words where DataComp's
lookup of "dog," finds nothing. ``entries`` may name another list (a text file, one entry a line,
or a JSON list), e.g. with plurals or ImageNet-21k's names.

``imagenet1k_classes.txt``: the 1,000 ImageNet-1k class names of OpenAI's CLIP prompts as open_clip
3.3.0 ships them (``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``), one a line, in that order,
with the second "missile" and "sunglasses" dropped (two classes each share those names): 998
lines. :func:`imagenet1k_class_names` rebuilds the list; a test checks the file against it.

Image-based: a cluster tree made by the ``curate`` flow (step setting ``tree``, default the flow's
``"tree"``); its level 1 gives every tree input (the filtered pool's kept samples) its cluster and
the centroids. Every target embedding (``targets``: a ``.npy`` of floats, one row per target image,
e.g. ImageNet-1k train images embedded with the pool's L/14 image encoder) is assigned to its
nearest level-1 centroid by the tree's own rule (squared L2, rows L2-normalised first when the
tree's metric is cosine), in chunks of ``TARGET_CHUNK_ROWS`` rows read from a memory map; a
candidate is kept when its cluster is one of those. Candidates outside the tree (not kept by the
filter run) have no cluster and are not kept; the figures count them. DataComp clustered the
caption-filtered pool's L/14 embeddings into 100,000 clusters with faiss (k-means, L2) and assigned
samples and targets by the largest inner product with the centroids; on the small pool (12.8M)
that is about 128 samples a cluster. Guidance: one level, ``k`` about pool size / 128 (100,000 for
DataComp's small pool), fitted over a filter run that keeps what DataComp clustered (its caption
filter); with a level 1 of ``auto_split_from`` clusters or more the tree splits coarse clusters,
and a sample's cluster is then the nearest centroid within its coarse cluster.
"""

from __future__ import annotations

import hashlib
import math
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from tasks.common.errors import InputError
from tasks.sample.pool_samples import PoolShard, PoolTable, map_shards, read_decisions

if TYPE_CHECKING:  # the runner's context; run.py imports this module
    from tasks.sample.run import RecipeContext
    from tasks.sample.recipe import Selection

IMAGENET1K_CLASSES = str(Path(__file__).with_name("imagenet1k_classes.txt"))
SCORE_COLUMNS = {"l14": "clip_l14_score", "b32": "clip_b32_score", "pool": "clip_score"}
OVER = ("pool", "candidates")
TIES = ("exact", "datacomp")
TARGET_CHUNK_ROWS = 65_536
DATACOMP_BASIC = {"english_only": True, "min_words": 3, "min_chars": 6, "min_image_side": 200,
                  "max_aspect_ratio": 3.0}
BASIC_MEANING = {"english_only": "English captions only", "min_words": "more than 2 words",
                 "min_chars": "more than 5 characters", "min_image_side": "smaller side at least 200 px",
                 "max_aspect_ratio": "aspect ratio at most 3"}

_CLIP = {"score": "l14", "fraction": None, "threshold": None, "over": "pool", "ties": "exact", "english": False}
_IMAGE = {"tree": "tree", "targets": None, "caption_filter": True}
BASELINES: dict[str, dict[str, Any]] = {
    "no_filter": {},
    "basic": {"strict": True},
    "clip_score": dict(_CLIP),
    "clip_l14_30": {**_CLIP, "fraction": 0.3},
    "laion2b": {**_CLIP, "score": "b32", "threshold": 0.28, "english": True},
    "text_based": {"entries": IMAGENET1K_CLASSES, "lowercase": True},
    "image_based": dict(_IMAGE),
    "image_based_clip_l14_30": {**_IMAGE, **_CLIP, "fraction": 0.3},
}
NAMED_PREFIX = "datacomp:"


# ----- settings --------------------------------------------------------------------------------
def named_recipe(name: str) -> list[dict]:
    """The steps of a named recipe: ``"datacomp:<baseline>"`` is that baseline as one step."""
    baseline = name[len(NAMED_PREFIX):] if name.startswith(NAMED_PREFIX) else None
    if baseline not in BASELINES:
        raise InputError(f"recipe {name!r}: not a named recipe; expected a list of steps or one of "
                         f"{', '.join(NAMED_PREFIX + b for b in BASELINES)}")
    if "targets" in BASELINES[baseline]:
        raise InputError(f"recipe {name!r}: the image-based baselines need a file of target embeddings; give the "
                         f"step itself: [{{\"step\": \"datacomp\", \"baseline\": \"{baseline}\", "
                         f"\"targets\": \"imagenet_l14.npy\", \"tree\": \"tree\"}}]")
    return [{"step": "datacomp", "baseline": baseline}]


def datacomp_settings(where: str, raw: dict) -> dict:
    """The step with its baseline's defaults filled in and checked; ``raw`` holds ``baseline`` and settings."""
    raw = dict(raw)
    baseline = raw.pop("baseline", None)
    if baseline not in BASELINES:
        raise InputError(f"{where}: baseline={baseline!r}; expected one of {', '.join(BASELINES)}")
    defaults = BASELINES[baseline]
    unknown = sorted(set(raw) - set(defaults))
    if unknown:
        raise InputError(f"{where} {baseline}: unknown setting(s) {unknown}; known: {sorted(defaults)}")
    step = {"step": "datacomp", "baseline": baseline, **defaults, **raw}
    where = f"{where} {baseline}"
    for name in ("strict", "english", "caption_filter", "lowercase"):
        if name in step and not isinstance(step[name], bool):
            raise InputError(f"{where}: {name}={step[name]!r} must be true or false")
    if "score" in step:
        if step["score"] not in SCORE_COLUMNS:
            raise InputError(f"{where}: score={step['score']!r}; expected one of {', '.join(SCORE_COLUMNS)}")
        if step["over"] not in OVER:
            raise InputError(f"{where}: over={step['over']!r}; expected one of {', '.join(OVER)}")
        if step["ties"] not in TIES:
            raise InputError(f"{where}: ties={step['ties']!r}; expected one of {', '.join(TIES)}")
        given = [name for name in ("fraction", "threshold") if step[name] is not None]
        if len(given) != 1:
            raise InputError(f"{where}: give exactly one of fraction or threshold (got {given or 'none'})")
        fraction, threshold = step["fraction"], step["threshold"]
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                     or not 0 < fraction <= 1):
            raise InputError(f"{where}: fraction={fraction!r} must be in (0, 1]")
        if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                      or not math.isfinite(threshold)):
            raise InputError(f"{where}: threshold={threshold!r} must be a number")
    if "targets" in step:
        if not isinstance(step["targets"], str) or not step["targets"]:
            raise InputError(f"{where}: targets={step['targets']!r}: give the .npy file of target image embeddings "
                             "(rows = target images, e.g. ImageNet-1k train images embedded with the pool's L/14)")
        if not isinstance(step["tree"], str):
            raise InputError(f"{where}: tree={step['tree']!r} must name one of the trees given to the subset")
    if "entries" in step and (not isinstance(step["entries"], str) or not step["entries"]):
        raise InputError(f"{where}: entries={step['entries']!r} must be the path of an entry list")
    return step


def step_label(step: dict) -> str:
    """How a step is named in reports: ``hkmeans``, ``datacomp:clip_l14_30``."""
    return f"datacomp:{step['baseline']}" if step["step"] == "datacomp" else step["step"]


def input_files(recipe) -> list[str]:
    """The files a recipe's datacomp steps read besides the store (entry lists, target embeddings)."""
    files = []
    for step in recipe:
        if step["step"] == "datacomp":
            files += [step[name] for name in ("entries", "targets") if step.get(name)]
    return sorted(set(files))


def file_digest(path: str, storage_options: dict | None = None) -> str:
    """sha256 of a file's bytes (read in 8 MiB pieces); an error names a file that cannot be read."""
    import fsspec

    digest = hashlib.sha256()
    try:
        with fsspec.open(path, "rb", **(storage_options or {})) as handle:
            while piece := handle.read(8 << 20):
                digest.update(piece)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise InputError(f"recipe: file {path} cannot be read: {error}") from error
    return digest.hexdigest()


def imagenet1k_class_names() -> list[str]:
    """open_clip's ImageNet-1k class names, each once, in their order (the shipped file's content)."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(dict.fromkeys(IMAGENET_CLASSNAMES))


# ----- per-sample rules -------------------------------------------------------------------------
def english_mask(reasons: pd.Series) -> np.ndarray:
    """True where ``not_english`` is not one of the comma-separated reasons of ``reason_basic``."""
    padded = "," + reasons.fillna("").astype(str) + ","
    return ~padded.str.contains(",not_english,", regex=False).to_numpy(dtype=bool)


def caption_filter_mask(text: pd.Series) -> np.ndarray:
    """DataComp's caption filter of the image-based baseline, less the language: at least 2 words
    (whitespace-separated, as fastText tokenises) and more than 5 characters."""
    text = text.fillna("").astype(str)
    words = text.str.split().str.len().fillna(0).to_numpy()
    return (words >= 2) & (text.str.len().to_numpy() > 5)


def prepare_entries(entries, lowercase: bool) -> list[str]:
    """Entries as the matcher needs them: normalised like a caption (punctuation spaced out), lower-cased
    if asked, each once (first occurrence kept)."""
    from tasks.metaclip.matching import normalise

    prepared = (normalise(entry)[1:-1] for entry in entries)
    return list(dict.fromkeys(entry.lower() if lowercase else entry for entry in prepared if entry.strip()))


def text_matches(matcher, texts: pd.Series, lowercase: bool):
    """The :class:`~tasks.metaclip.matching.Matches` of the texts (lower-cased first if asked)."""
    texts = texts.fillna("").astype(str)
    return matcher.match((texts.str.lower() if lowercase else texts).tolist())


RULE_COLUMNS = {"basic": ("keep_basic",), "english": ("reason_basic",), "caption": ("text",),
                "text": ("text",)}


def shard_rules(store, rules: tuple[str, ...], matcher, lowercase: bool, shard: PoolShard,
                candidates: np.ndarray) -> tuple[np.ndarray, dict[str, int], np.ndarray | None]:
    """One shard's rows that pass every rule, how many candidates each rule fails, and per entry the
    candidates naming it (the ``text`` rule)."""
    columns = sorted({column for rule in rules for column in RULE_COLUMNS[rule]})
    frame = read_decisions(store, shard, columns)
    if len(frame) != len(candidates):
        raise InputError(f"{shard.decisions}: {len(frame)} rows, but the pool table has {len(candidates)} samples "
                         f"in shard {shard.shard_id}")
    passing = np.ones(len(frame), dtype=bool)
    failed, entry_counts = {}, None
    for rule in rules:
        if rule == "basic":
            mask = frame["keep_basic"].to_numpy(dtype=bool)
        elif rule == "english":
            mask = english_mask(frame["reason_basic"])
        elif rule == "caption":
            mask = caption_filter_mask(frame["text"])
        else:
            matches = text_matches(matcher, frame["text"], lowercase)
            mask = matches.counts_per_text() > 0
            entry_counts = np.bincount(matches.take(candidates).entry_ids, minlength=len(matcher)).astype(np.int64)
        failed[rule] = int((candidates & ~mask).sum())
        passing &= mask
    return passing, failed, entry_counts


# ----- CLIP score: threshold or exact top fraction ---------------------------------------------
def shard_scores(store, column: str, shard: PoolShard, population: np.ndarray) -> np.ndarray:
    """float64: the scores of the shard's rows under ``population`` (in row order; NaN stays NaN)."""
    scores = read_decisions(store, shard, (column,))[column].to_numpy(dtype=np.float64)
    if len(scores) != len(population):
        raise InputError(f"{shard.decisions}: {len(scores)} rows, but the pool table has {len(population)} samples "
                         f"in shard {shard.shard_id}")
    return scores[population]


def count_above(scores: np.ndarray, cutoff: float) -> tuple[int, int]:
    """How many finite scores lie above ``cutoff``, and how many equal it."""
    return int((scores > cutoff).sum()), int((scores == cutoff).sum())


def keep_by_cutoff(scores: np.ndarray, cutoff: float | None, tie_quota: int | None) -> np.ndarray:
    """bool per score: above ``cutoff``, or equal to it and among the first ``tie_quota`` such (in row
    order); every score equal to it when ``tie_quota`` is None. ``cutoff`` None keeps nothing."""
    if cutoff is None:
        return np.zeros(len(scores), dtype=bool)
    if tie_quota is None:
        return scores >= cutoff
    tied = scores == cutoff
    return (scores > cutoff) | (tied & (np.cumsum(tied) <= tie_quota))


def top_count(n: int, fraction: float) -> int:
    """``floor(n * fraction)`` with the fraction read as the decimal written (0.3 of 10 is 3, not 2)."""
    return int(Fraction(repr(float(fraction))) * n)


def allot_ties(ties: list[int], quota: int) -> list[int]:
    """The tie quota handed to the shards in order: each takes what it has until the quota is spent."""
    before = np.concatenate([[0], np.cumsum(ties, dtype=np.int64)[:-1]]) if ties else np.zeros(0, dtype=np.int64)
    return np.clip(quota - before, 0, np.asarray(ties, dtype=np.int64)).astype(int).tolist()


class ScoreParts:
    """Per shard, the scores of a population of rows: numpy arrays here, or persisted on the workers."""

    def __init__(self, table: PoolTable, column: str, population: np.ndarray, client=None):
        self.client = client
        jobs = [(shard, piece) for shard, piece in zip(table.shards, table.split(population))]
        if client is None:
            self.parts: list = [shard_scores(table.store, column, *job) for job in jobs]
        else:
            import dask

            self.parts = client.persist([dask.delayed(shard_scores, pure=True)(table.store, column, *job)
                                         for job in jobs])

    @classmethod
    def from_arrays(cls, parts: list[np.ndarray]) -> "ScoreParts":
        """Parts given as arrays, in this process (tests, small pools)."""
        made = cls.__new__(cls)
        made.client, made.parts = None, [np.asarray(part, dtype=np.float64) for part in parts]
        return made

    def map(self, function, *args, per_part: list | None = None) -> list:
        """``function(part, *args, *per_part[i])`` of every part ``i``, in shard order, where the parts are."""
        extra = per_part or [()] * len(self.parts)
        if self.client is None:
            return [function(part, *args, *more) for part, more in zip(self.parts, extra)]
        import dask

        from tasks.common.shuffle import compute

        return compute(self.client, [dask.delayed(function, pure=True)(part, *args, *more)
                                     for part, more in zip(self.parts, extra)])


def _finite(scores: np.ndarray) -> int:
    return int(np.isfinite(scores).sum())


def clip_selection(parts: ScoreParts, fraction: float | None, threshold: float | None,
                   ties: str) -> tuple[list[np.ndarray], dict]:
    """Per shard, which rows of the population pass; and the figures (population, cutoff, ties)."""
    from tasks.filters.clip_score import order_statistic

    n = sum(parts.map(_finite))
    figures: dict = {"population": n}
    quotas = None
    if threshold is not None:
        cutoff = float(threshold)
    elif ties == "datacomp":
        rank = int(n * fraction)  # DataComp: -np.sort(-scores)[int(n * fraction)]
        cutoff = None if n == 0 else order_statistic(parts.parts, max(n - 1 - rank, 0), parts.client)
        figures["rank_from_top"] = rank + 1
    else:
        k = top_count(n, fraction)
        figures["selected_in_population"] = k
        cutoff = order_statistic(parts.parts, n - k, parts.client) if k else None
        if cutoff is not None:
            above, equal = zip(*parts.map(count_above, cutoff))
            quota = k - sum(above)
            quotas = allot_ties(list(equal), quota)
            figures.update(at_cutoff=int(sum(equal)), ties_kept=int(quota))
    keep = parts.map(keep_by_cutoff, cutoff, per_part=[(quota,) for quota in quotas or [None] * len(parts.parts)])
    figures["cutoff"] = cutoff
    return keep, figures


def clip_mask(table: PoolTable, step: dict, candidates: np.ndarray, client=None) -> tuple[np.ndarray, dict]:
    """bool over the pool's rows: the samples the step's CLIP score rule keeps; and its figures."""
    column = SCORE_COLUMNS[step["score"]]
    population = np.ones(len(table), dtype=bool) if step["over"] == "pool" else candidates
    parts = ScoreParts(table, column, population, client)
    keep, figures = clip_selection(parts, step["fraction"], step["threshold"], step["ties"])
    mask = np.zeros(len(table), dtype=bool)
    mask[np.flatnonzero(population)] = np.concatenate(keep) if keep else np.zeros(0, dtype=bool)
    figures = {"score": step["score"], "column": column, "over": step["over"],
               **({"fraction": step["fraction"], "ties": step["ties"]} if step["fraction"] is not None
                  else {"threshold": float(step["threshold"])}),
               **figures, "kept_in_population": int(mask.sum())}
    return mask, figures


# ----- image-based: the target images' clusters -------------------------------------------------
def open_targets(path: str, storage_options: dict | None = None) -> np.ndarray:
    """The target embeddings: a memory map of a local ``.npy``, else the array read whole."""
    import io

    import fsspec

    try:
        if "://" not in path or path.startswith("file://"):
            return np.load(path.removeprefix("file://"), mmap_mode="r", allow_pickle=False)
        with fsspec.open(path, "rb", **(storage_options or {})) as handle:
            return np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        raise InputError(f"targets file {path} cannot be read: {error}") from error
    except ValueError as error:
        raise InputError(f"targets file {path} is not a .npy array: {error}") from error


def target_clusters(targets: np.ndarray, centroids: np.ndarray, metric: str, what: str,
                    chunk_rows: int = TARGET_CHUNK_ROWS) -> np.ndarray:
    """bool per centroid: whether it is the nearest centroid of at least one target row.

    Nearest by squared L2 after L2-normalising the rows when ``metric`` is ``"cosine"`` (the rule the
    tree assigned its samples by); ``chunk_rows`` target rows at a time.
    """
    from tasks.cluster.hierarchical import normalise_rows
    from tasks.cluster.kmeans import assign_points

    if targets.ndim != 2 or not np.issubdtype(targets.dtype, np.floating):
        raise InputError(f"{what}: expected a 2-D float array (rows = target images), got {targets.dtype} "
                         f"of shape {targets.shape}")
    if targets.shape[1] != centroids.shape[1]:
        raise InputError(f"{what}: embeddings of dimension {targets.shape[1]}, but the tree's centroids have "
                         f"dimension {centroids.shape[1]}: embed the targets with the model the pool was "
                         "clustered with")
    if len(targets) == 0:
        raise InputError(f"{what}: no target row")
    hit = np.zeros(len(centroids), dtype=bool)
    for start in range(0, len(targets), chunk_rows):
        block = np.asarray(targets[start:start + chunk_rows], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise InputError(f"{what}: row {start + int(np.flatnonzero(~finite)[0])} is not finite")
        if metric == "cosine":
            block = normalise_rows(block, f"{what}, rows {start}-{start + len(block) - 1}")
        labels, _ = assign_points(block, centroids)
        hit[labels] = True
    return hit


def image_mask(context: "RecipeContext", step: dict, where: str) -> tuple[np.ndarray, dict]:
    """bool over the pool's rows: tree inputs whose level-1 cluster is nearest to some target; and figures."""
    tree = context.tree(step["tree"])
    level = tree.levels[0]
    metric = tree.tree.manifest.get("config", {}).get("metric", "l2")
    what = f"{where}: targets file {step['targets']}"
    targets = open_targets(step["targets"], context.store.options_for(step["targets"]))
    hit = target_clusters(targets, np.asarray(level.centroids, dtype=np.float32), metric, what)
    mask = np.zeros(len(context.table), dtype=bool)
    mask[tree.rows()] = hit[level.labels]
    return mask, {"tree": tree.folder, "k": int(level.k), "metric": metric, "targets": step["targets"],
                  "target_rows": int(len(targets)), "target_clusters": int(hit.sum())}


# ----- the step ----------------------------------------------------------------------------------
def _rules_of(step: dict) -> tuple[str, ...]:
    baseline = step["baseline"]
    if baseline == "basic":
        return ("basic",)
    if baseline == "text_based":
        return ("english", "text")
    rules: tuple[str, ...] = ()
    if step.get("english") or step.get("caption_filter"):
        rules += ("english",)
    if step.get("caption_filter"):
        rules += ("caption",)
    return rules


def basic_settings(filter_manifest: dict) -> dict:
    """The basic filter's settings recorded in the filter run's manifest (None where not recorded)."""
    config = filter_manifest.get("config") or {}
    return {name: config.get(name) for name in (*DATACOMP_BASIC, "english_min_probability")}


def english_rule(settings: dict) -> str:
    probability = settings.get("english_min_probability")
    rule = (f"langid P(English) >= {probability} (filters english_min_probability)" if probability is not None
            else "the filter run's not_english reason (its settings are not recorded)")
    return f"{rule}; DataComp: fastText's top language is English (LAION-2B: gcld3)"


def _check_filter_run(context: "RecipeContext", step: dict, rules: tuple[str, ...], where: str) -> dict:
    """The filter run's basic settings, after checking that it has what the rules read."""
    snapshot = context.table.snapshot
    if snapshot.filters is None:
        stale = f" ({snapshot.stale})" if snapshot.stale else ""
        raise InputError(f"{where}: pool {context.table.pool!r} has not been filtered{stale}; this baseline reads the "
                         "filter run's decisions: run pool_refresh with an embedder and filters")
    settings = basic_settings(snapshot.filters.manifest)
    folder = snapshot.filters.manifest.get("outputs", {}).get("folder", "")
    if "english" in rules and settings["english_only"] is False:
        raise InputError(f"{where}: filter run {folder} ran with english_only=false, so its decisions have no "
                         "language rule; rerun the filters with english_only=true")
    unchecked = ((snapshot.filters.manifest.get("stats") or {}).get("skipped") or {}).get("basic_size_rules")
    if "basic" in rules and step["strict"] and unchecked:
        raise InputError(f"{where}: filter run {folder}: {unchecked}, which DataComp's basic filtering removes "
                         "(their smaller side is not known to be 200 px); set \"strict\": false to keep them "
                         "(the step's figures then say so)")
    if "basic" in rules and step["strict"]:
        for name, value in DATACOMP_BASIC.items():
            if settings[name] != value:
                raise InputError(f"{where}: filter run {folder} ran the basic filter with {name}={settings[name]!r}, "
                                 f"DataComp's basic filtering has {name}={value!r} ({BASIC_MEANING[name]}); rerun "
                                 "the filters with DataComp's settings, or set \"strict\": false to use the run's "
                                 "(the step's figures then list them)")
    return settings


def _first_shard_has(context: "RecipeContext", columns: tuple[str, ...], where: str) -> None:
    """An error naming the column, the decisions file and where the column comes from, when the pool's
    first shard lacks one (each shard's reader checks its own file too)."""
    import pyarrow.parquet as pq

    shard = context.table.shards[0]
    with context.store.open(context.store.relative(shard.decisions)) as handle:
        names = set(pq.ParquetFile(handle).schema_arrow.names)
    for column in columns:
        if column not in names:
            raise InputError(f"{where}: pool {context.table.pool!r} has no column {column!r} in its filter decisions "
                             f"(e.g. {shard.decisions}); {_COLUMN_WHY[column]}")


_COLUMN_WHY = {
    "clip_l14_score": "score='l14' needs it: it comes with pools imported from DataComp's metadata; use "
                      "score='pool' for the pool's own embedder's CLIP score (clip_score)",
    "clip_b32_score": "score='b32' needs it: it comes with pools imported from DataComp's metadata; use "
                      "score='pool' for the pool's own embedder's CLIP score (clip_score)",
    "clip_score": "score='pool' needs it: the embed-and-filter stage writes it",
    "keep_basic": "the basic filter writes it: run the filters with basic",
    "reason_basic": "the basic filter's English rule writes it: run the filters with basic (english_only=true)",
    "text": "the filter run carries the captions",
}


def datacomp_step(context: "RecipeContext", selection: "Selection", step: dict, number: int) -> dict:
    """Apply the step's baseline to the candidates; returns its figures."""
    where = f"recipe step {number} (datacomp {step['baseline']})"
    candidates = selection.candidates
    before = selection.size
    figures: dict = {"baseline": step["baseline"]}
    if step["baseline"] == "no_filter":
        return figures
    rules = _rules_of(step)
    settings = _check_filter_run(context, step, rules, where)
    needed = tuple(dict.fromkeys([c for rule in rules for c in RULE_COLUMNS[rule]]
                                 + ([SCORE_COLUMNS[step["score"]]] if "score" in step else [])))
    _first_shard_has(context, needed, where)
    if "basic" in rules:
        figures["basic_settings"] = {name: settings[name] for name in DATACOMP_BASIC}
        skipped = ((context.table.snapshot.filters.manifest.get("stats") or {}).get("skipped") or {})
        if skipped.get("basic_size_rules"):
            figures["basic_size_rules_skipped"] = skipped["basic_size_rules"]
        figures["datacomp_settings"] = (all(settings[name] == value for name, value in DATACOMP_BASIC.items())
                                        and "basic_size_rules_skipped" not in figures)
    if "english" in rules or "basic" in rules:
        figures["english_rule"] = english_rule(settings)
    keep = np.ones(len(context.table), dtype=bool)
    if rules:
        matcher = None
        if "text" in rules:
            from tasks.metaclip.matching import EntryMatcher
            from tasks.metaclip.metadata import load_metadata

            listed = load_metadata(step["entries"], context.store.options_for(step["entries"])).entries
            matcher = EntryMatcher(prepare_entries(listed, step["lowercase"]))
            figures.update(entries=step["entries"], n_entries=len(matcher), lowercase=step["lowercase"])
        jobs = [(shard, piece) for shard, piece in zip(context.table.shards, context.table.split(candidates))]
        passing, failed, entry_counts = [], dict.fromkeys(rules, 0), None
        for shard_passing, shard_failed, shard_counts in map_shards(context.client, shard_rules, jobs, context.store,
                                                                      rules, matcher, step.get("lowercase", True)):
            passing.append(shard_passing)
            for rule, count in shard_failed.items():
                failed[rule] += count
            if shard_counts is not None:
                entry_counts = shard_counts if entry_counts is None else entry_counts + shard_counts
        keep &= np.concatenate(passing)
        figures["candidates_failing"] = failed
        if entry_counts is not None:
            figures["entries_named"] = int((entry_counts > 0).sum())
            top = np.argsort(-entry_counts, kind="stable")[:10]
            figures["top_entries"] = {matcher.entries[i]: int(entry_counts[i]) for i in top if entry_counts[i] > 0}
    if "score" in step:
        mask, clip_figures = clip_mask(context.table, step, candidates, context.client)
        figures["clip"] = clip_figures
        figures.setdefault("candidates_failing", {})["clip_score"] = int((candidates & ~mask).sum())
        keep &= mask
    if "targets" in step:
        mask, image_figures = image_mask(context, step, where)
        tree_rows = np.zeros(len(context.table), dtype=bool)
        tree_rows[context.tree(step["tree"]).rows()] = True
        image_figures["candidates_outside_tree"] = int((candidates & ~tree_rows).sum())
        figures["image"] = image_figures
        figures.setdefault("candidates_failing", {})["image_clusters"] = int((candidates & ~mask).sum())
        keep &= mask
    selection.keep_only(keep)
    figures["removed"] = before - selection.size
    return figures


__all__ = ["BASELINES", "IMAGENET1K_CLASSES", "NAMED_PREFIX", "SCORE_COLUMNS", "allot_ties", "caption_filter_mask",
           "clip_mask", "clip_selection", "datacomp_settings", "datacomp_step", "english_mask", "file_digest",
           "imagenet1k_class_names", "input_files", "keep_by_cutoff", "named_recipe", "prepare_entries",
           "step_label", "target_clusters", "top_count"]
