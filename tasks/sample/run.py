"""The sampling stage: run a curation recipe over a pool and write the subset into the store.

In:  the catalog, a resolved pool snapshot, a subset name, a :class:`SubsetConfig` (the recipe and
     its options), the cluster trees the recipe may use (name -> the clustering stage's manifest),
     and optionally a Dask client (MetaCLIP matching and resharding run on it).
Out: the subset's folder (:meth:`~tasks.common.catalog.Catalog.subset_folder`) with

- ``subset.parquet``: the chosen samples (``uid``, ``key``, ``text``, ``source_tar`` and, for
  MetaCLIP's online mode, ``keep_probability``);
- ``subset.npy``: DataComp's subset file (sorted uint64 pairs of the uids);
- ``shards/*.tar``: the chosen samples resharded (unless ``reshard`` is off);
- ``indicators.json``: dataset-scale indicators over the clusters of every level of every tree
  and over the metadata entries, for the pool and after every step, plus each step's figures;
- ``cluster_sizes.png`` and ``entry_counts.png``;
- ``manifest.json``, written last: what the training stage reads (``outputs.shards``).

A rerun with the same inputs finds the manifest and returns it; an interrupted run redoes only
the shards and matches not yet in the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from tasks.cluster.tree import load_tree, sample_labels
from tasks.common.catalog import Catalog, ClusterTree, PoolSnapshot, shard_id
from tasks.common.errors import InputError
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.store import Store
from tasks.sample.indicators import class_sizes_plot, cumulative_counts_plot, indicators
from tasks.metaclip.balance import (balance_report, draw, entry_counts, expected_size, keep_probabilities,
                                    threshold_for_expected_size, threshold_for_tail_share)
from tasks.metaclip.run import BUILT_FROM_POOL, match_pool, pool_metadata
from tasks.sample.pool_samples import PoolSamples, pool_samples
from tasks.sample.recipe import Selection, check_target, parse_recipe
from tasks.sample.subset_files import datacomp_uid_array, reshard
from tasks.sample.tree_sampling import balanced_sample, top_level_distances

SUBSET_VERSION = 2  # bump when a change alters the subset a config produces


@dataclass(frozen=True)
class SubsetConfig:
    """A recipe plus where its metadata comes from, what to report and how to write the subset."""

    recipe: tuple = ()
    metadata: str = BUILT_FROM_POOL
    ngrams: dict = field(default_factory=dict)
    report_metadata: bool = False
    long_tail_thresholds: tuple[int, ...] = (100, 500)
    reshard: bool = True
    shard_size: int = 1000

    @classmethod
    def from_dict(cls, values: dict | list) -> "SubsetConfig":
        values = {"recipe": values} if isinstance(values, list) else dict(values)
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise InputError(f"subset: unknown setting(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        values["recipe"] = tuple(parse_recipe(values.get("recipe")))
        if "long_tail_thresholds" in values:
            values["long_tail_thresholds"] = tuple(int(v) for v in values["long_tail_thresholds"])
        config = cls(**values)
        if config.shard_size <= 0:
            raise InputError(f"subset: shard_size={config.shard_size} must be positive")
        return config

    def to_dict(self) -> dict:
        return {**asdict(self), "recipe": [dict(step) for step in self.recipe],
                "long_tail_thresholds": list(self.long_tail_thresholds)}

    @property
    def uses_metadata(self) -> bool:
        return self.report_metadata or any(step["step"] == "metaclip" for step in self.recipe)


class TreeView:
    """A cluster tree seen from the pool table: its levels and every pool row's label per level."""

    def __init__(self, store: Store, tree: ClusterTree, samples: PoolSamples):
        self.tree = tree
        self.folder = tree.folder
        self.levels = load_tree(store, store.relative(tree.folder))
        with store.open(store.relative(tree.outputs["inputs"])) as handle:
            uids = pd.read_parquet(handle, columns=["uid"])["uid"].to_numpy()
        if len(uids) != len(self.levels[0].labels):
            raise InputError(f"tree {tree.folder}: {len(uids)} inputs but level 1 labels "
                             f"{len(self.levels[0].labels)} samples")
        self.rows = samples.rows_of(uids, f"tree {tree.folder}")
        self.labels = np.full((len(samples), len(self.levels)), -1, dtype=np.int64)
        self.labels[self.rows] = sample_labels(self.levels)
        self.store = store
        self.snapshot = samples.snapshot

    def counts(self, mask: np.ndarray, level: int) -> np.ndarray:
        labels = self.labels[mask, level - 1]
        return np.bincount(labels[labels >= 0], minlength=self.levels[level - 1].k)

    def top_distances(self) -> np.ndarray:
        """Distance of each tree input to its top-level centroid, from the pool's embeddings."""
        from tasks.cluster.pool_input import pool_embeddings

        embeddings = pool_embeddings(self.store, self.snapshot).as_dask_array().compute()
        return top_level_distances(self.levels, embeddings, self.tree.manifest["config"]["metric"])


class RecipeContext:
    """What the steps read, loaded when first needed: trees and MetaCLIP matches."""

    def __init__(self, catalog: Catalog, samples: PoolSamples, config: SubsetConfig, trees: dict[str, dict],
                 client=None):
        self.catalog, self.store = catalog, catalog.store
        self.samples, self.config, self.tree_manifests, self.client = samples, config, trees, client
        self.trees: dict[str, TreeView] = {}
        self.metadata = None
        self._matches = None

    def tree(self, name: str) -> TreeView:
        if name not in self.tree_manifests:
            raise InputError(f"recipe: tree={name!r} is not one of the trees given ({sorted(self.tree_manifests)})")
        if name not in self.trees:
            self.trees[name] = TreeView(self.store, ClusterTree(self.tree_manifests[name]), self.samples)
        return self.trees[name]

    @property
    def matched(self) -> bool:
        """Whether the MetaCLIP matches were loaded (a step or the report needed them)."""
        return self._matches is not None

    def matches(self):
        if self._matches is None:
            self.metadata = pool_metadata(self.catalog, self.samples, self.config.metadata, self.config.ngrams)
            self._matches = match_pool(self.catalog, self.samples, self.metadata, self.client)
        return self._matches


def run_recipe(context: RecipeContext) -> tuple[Selection, list[np.ndarray]]:
    """Apply every step; returns the final selection and the candidate mask after each step."""
    selection = Selection(candidates=np.ones(len(context.samples), dtype=bool))
    masks = [selection.candidates.copy()]
    for number, step in enumerate(context.config.recipe, 1):
        figures = STEP_RUNNERS[step["step"]](context, selection, step, number)
        selection.figures.append({"step": step["step"], "size": selection.size, **figures})
        masks.append(selection.candidates.copy())
    return selection, masks


def _filters_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    if not context.samples.filtered:
        stale = context.samples.snapshot.stale
        raise InputError(f"recipe step {number} (filters): pool {context.samples.pool!r} has not been filtered"
                         f"{f' ({stale})' if stale else ''}; "
                         f"run pool_refresh with an embedder and filters")
    selection.narrow(np.flatnonzero(selection.candidates & context.samples.frame["kept"].to_numpy(dtype=bool)))
    return {}


def _random_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    rows = np.flatnonzero(selection.candidates)
    target = check_target(step, number, len(rows))
    selection.narrow(np.random.default_rng(step["seed"]).choice(rows, size=target, replace=False))
    return {}


def _hkmeans_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    tree = context.tree(step["tree"])
    in_tree = selection.candidates[tree.rows]
    target = check_target(step, number, int(in_tree.sum()), "candidates in the cluster tree")
    distances = tree.top_distances() if step["mode"] == "flat" and step["selection"] != "r" else None
    chosen = balanced_sample(tree.levels, target, mode=step["mode"], selection=step["selection"], seed=step["seed"],
                             candidates=in_tree, distances=distances)
    outside = selection.size - int(in_tree.sum())
    selection.narrow(tree.rows[chosen])
    return {"tree": tree.folder, "candidates_outside_tree": outside}


def _metaclip_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    rows = np.flatnonzero(selection.candidates)
    matches = context.matches().take(rows)
    counts = entry_counts(matches, len(context.metadata))
    matched = matches.counts_per_text() > 0
    if step["matched_only"]:
        selection.narrow(rows[matched])
        return {"matched": int(matched.sum())}
    if step["t"] is not None:
        t = float(step["t"])
    elif step["tail_share"] is not None:
        t = float(threshold_for_tail_share(counts, step["tail_share"]))
    else:
        target = check_target(step, number, int(matched.sum()), "candidates matching a metadata entry")
        t = threshold_for_expected_size(matches, counts, target)
        # aim 3 standard deviations above the target, so that the draw, cut to the target at
        # random, has exactly the target's size (all arms of an A/B the same size)
        spread = 3.0 * float(np.sqrt(np.sum(_variance(keep_probabilities(matches, counts, t)))))
        t = threshold_for_expected_size(matches, counts, min(int(matched.sum()), int(np.ceil(target + spread))))
    probabilities = keep_probabilities(matches, counts, t)
    figures = {"t": t, "matched": int(matched.sum()), "expected_size": expected_size(probabilities),
               "expected_size_sd": float(np.sqrt(np.sum(_variance(probabilities))))}
    if step["online"]:
        keep = probabilities > 0
        full = np.zeros(len(selection.candidates))
        full[rows] = probabilities
        selection.keep_probability = full
    else:
        keep = draw(probabilities, step["seed"])
        figures["drawn_size"] = int(keep.sum())
        if step["target"] is not None and keep.sum() > step["target"]:
            drawn = np.flatnonzero(keep)
            keep[:] = False
            keep[np.random.default_rng(step["seed"] + 1).choice(drawn, size=step["target"], replace=False)] = True
        figures.update(_entry_balance(matches, counts, probabilities, keep, t))
    selection.narrow(rows[keep])
    return figures


def _variance(probabilities: np.ndarray) -> np.ndarray:
    return probabilities * (1.0 - probabilities)


def _entry_balance(matches, counts: np.ndarray, probabilities: np.ndarray, keep: np.ndarray, t: float) -> dict:
    """How the draw balanced the entries: MetaCLIP's report, plus realised against expected counts."""
    report = {key: (value.item() if isinstance(value, np.generic) else value)
              for key, value in balance_report(matches, counts, keep, t).items() if key != "counts_after"}
    after = entry_counts(matches.take(np.flatnonzero(keep)), len(counts))
    expected = np.bincount(matches.entry_ids, weights=np.repeat(probabilities, matches.counts_per_text()),
                           minlength=len(counts))
    head = (counts > t) & (expected > 0)
    if head.any():
        report["head_realised_over_expected_median"] = float(np.median(after[head] / expected[head]))
    return report


STEP_RUNNERS = {"filters": _filters_step, "random": _random_step, "hkmeans": _hkmeans_step,
                "metaclip": _metaclip_step}


def subset_inputs(snapshot: PoolSnapshot, trees: dict[str, dict]) -> dict:
    """The content hashes a subset is made from: the snapshot's manifests and every tree's."""
    return {**snapshot.hashes, "trees": {name: tree["content_hash"] for name, tree in sorted(trees.items())}}


def subset_key(snapshot: PoolSnapshot, config: SubsetConfig, trees: dict[str, dict]) -> str:
    return hash_json({"inputs": subset_inputs(snapshot, trees), "config": config.to_dict(), "version": SUBSET_VERSION})


def subset_folder(catalog: Catalog, snapshot: PoolSnapshot, name: str, config: SubsetConfig,
                  trees: dict[str, dict]) -> str:
    return catalog.subset_folder(snapshot.pool.name, name, subset_key(snapshot, config, trees))


def make_subset(catalog: Catalog, snapshot: PoolSnapshot, name: str, config: SubsetConfig,
                trees: dict[str, dict] | None = None, client=None) -> dict:
    """Run ``config``'s recipe on the snapshot's pool and write the subset; returns its manifest."""
    store = catalog.store
    trees = dict(trees or {})
    folder = subset_folder(catalog, snapshot, name, config, trees)
    done = catalog.finished(folder)
    if done is not None:
        return done
    samples = pool_samples(store, snapshot)
    pool_name = snapshot.pool.name
    context = RecipeContext(catalog, samples, config, trees, client)
    for tree_name in trees:
        context.tree(tree_name)
    if config.uses_metadata:
        context.matches()
    selection, masks = run_recipe(context)
    chosen = samples.frame.loc[selection.candidates, ["uid", "key", "text", "shard"]].reset_index(drop=True)
    if selection.keep_probability is not None:
        chosen["keep_probability"] = selection.keep_probability[selection.candidates]
    report = indicator_report(context, masks)
    outputs = {"parquet": store.write_bytes(f"{folder}/subset.parquet", _subset_table(chosen, samples).to_parquet(
                   index=False)),
               "datacomp": store.write_npy(f"{folder}/subset.npy", datacomp_uid_array(chosen["uid"].to_numpy())),
               "indicators": store.write_json(f"{folder}/indicators.json", {**report, "steps": selection.figures}),
               **write_plots(store, folder, context, masks)}
    if config.reshard:
        key = subset_key(snapshot, config, trees)
        outputs["shards"] = reshard(store, samples.shards, chosen, f"{folder}/shards", config.shard_size,
                                    lambda number: shard_id(0, key, number), client)
    outputs["folder"] = store.uri(folder)
    manifest = Manifest(stage="subset", name=f"{pool_name}/{name}", store=store.root, config=config.to_dict(),
                        code_version=code_version("subset", SUBSET_VERSION),
                        inputs={**subset_inputs(snapshot, trees),
                                "metadata": context.metadata.source if context.metadata else None},
                        outputs=outputs, rows={"pool": len(samples), "subset": int(len(chosen))},
                        stats={"steps": selection.figures, "indicators": report["final"]})
    return catalog.publish(folder, manifest)


def _subset_table(chosen: pd.DataFrame, samples: PoolSamples) -> pd.DataFrame:
    """The chosen samples with their source shard's id (and tar, for tools that read the pool's shards)."""
    source = chosen["shard"].to_numpy()
    ids = np.array([shard["shard_id"] for shard in samples.shards], dtype=object)
    tars = np.array([shard["tar"] for shard in samples.shards], dtype=object)
    return chosen.assign(source_shard_id=ids[source], source_tar=tars[source]).drop(columns=["shard"])


def indicator_report(context: RecipeContext, masks: list[np.ndarray]) -> dict:
    """Indicators over every tree level and over the metadata entries, for the pool and after each step."""
    names = ["pool"] + [f"{number}. {step['step']}" for number, step in enumerate(context.config.recipe, 1)]
    options = {"long_tail_thresholds": context.config.long_tail_thresholds}
    stages = []
    for stage, mask in zip(names, masks):
        entry = {"after": stage, "samples": int(mask.sum())}
        for tree_name, tree in context.trees.items():
            for level in range(1, len(tree.levels) + 1):
                entry[f"{tree_name} level {level}"] = indicators(tree.counts(mask, level), **options)
        if context.matched:
            entry["metadata entries"] = indicators(_entry_counts_of(context, mask), **options)
        stages.append(entry)
    return {"stages": stages, "final": stages[-1]}


def _entry_counts_of(context: RecipeContext, mask: np.ndarray) -> np.ndarray:
    return entry_counts(context.matches().take(np.flatnonzero(mask)), len(context.metadata))


def write_plots(store: Store, folder: str, context: RecipeContext, masks: list[np.ndarray]) -> dict:
    """Cluster sizes of every tree's top level and cumulative entry counts: the pool against the subset."""
    outputs = {}
    if context.trees:
        named = {f"{tree_name} top level, {label}": tree.counts(mask, len(tree.levels))
                 for tree_name, tree in context.trees.items() for label, mask in (("pool", masks[0]),
                                                                                   ("subset", masks[-1]))}
        outputs["cluster_sizes_plot"] = store.write_bytes(f"{folder}/cluster_sizes.png", class_sizes_plot(
            named, "samples per top-level cluster"))
    if context.matched:
        named = {"pool": _entry_counts_of(context, masks[0]), "subset": _entry_counts_of(context, masks[-1])}
        outputs["entry_counts_plot"] = store.write_bytes(f"{folder}/entry_counts.png", cumulative_counts_plot(
            named, "cumulative share of entry matches"))
    return outputs
