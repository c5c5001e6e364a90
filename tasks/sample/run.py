"""The sampling stage: run a curation recipe over a pool and write the subset into the store.

In:  the catalog, a resolved pool snapshot, a subset name, a :class:`SubsetConfig` (the recipe and
     its options), the cluster trees the recipe may use (name -> the clustering stage's manifest),
     and optionally a Dask client (``None``: every per-shard task runs in this process, the same code).
Out: the subset's folder (:meth:`~tasks.common.catalog.Catalog.subset_folder`) with

- ``subset.parquet``: the chosen samples (``uid``, ``key``, ``text``, for MetaCLIP's online mode
  ``keep_probability``, then ``source_shard_id`` and ``source_tar``), written one pool shard's
  piece at a time;
- ``subset.npy``: DataComp's subset file (sorted uint64 pairs of the uids);
- ``shards/*.tar``: the chosen samples resharded (unless ``reshard`` is off);
- ``indicators.json``: dataset-scale indicators over the clusters of every level of every tree
  and over the metadata entries, for the pool and after every step, plus each step's figures;
- ``cluster_sizes.png`` and ``entry_counts.png``;
- ``manifest.json``, written last: what the training stage reads (``outputs.shards``).

Memory: the pool is a :class:`~tasks.sample.pool_samples.PoolTable` (per shard its records and
sample count, per sample a kept flag); the steps work on boolean masks over the pool's rows (global
row = shard offset + row), a random or tree step on the int64 rows of its candidates, the online
MetaCLIP mode on one float64 a sample. Captions and uids are read by the worker tasks (one per
shard) that need them: MetaCLIP's matching and balancing (:mod:`tasks.metaclip.run`), the flat
tree step's distances, the subset's files. A cluster tree's inputs are the filtered pool's kept
samples in shard order (:func:`tasks.cluster.pool_input.pool_embeddings`), so tree rows map to pool
rows by the per-shard kept counts, and a tree is checked to come from this snapshot by the content
hashes in its manifest's ``inputs`` (a tree without them, by its inputs' uids, shard by shard).
Indicators come from counts: per-cluster counts by bincount over the selected tree inputs,
per-entry counts by a reduction over the shards.

A rerun with the same inputs finds the manifest and returns it; an interrupted run redoes only
the shards and matches not yet in the store.

DataComp's baselines (the ``datacomp`` step, :mod:`tasks.sample.datacomp_baselines`) read further
columns of the filter decisions per shard, a tree's level 1 and a file of target embeddings; the
files a recipe reads outside the store (entry lists, target embeddings) enter the subset's key by
their sha256.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow.parquet as pq

from tasks.cluster.pool_input import load_kept_rows
from tasks.cluster.tree import load_tree
from tasks.common.catalog import Catalog, ClusterTree, PoolSnapshot, shard_id
from tasks.common.errors import InputError, StageFailed
from tasks.common.hashing import code_version, hash_json
from tasks.common.manifest import Manifest
from tasks.common.options import check_known_settings
from tasks.common.store import Store
from tasks.metaclip.balance import report_from_counts, threshold_for_tail_share
from tasks.metaclip.run import BUILT_FROM_POOL, PoolMatches, match_pool, pool_metadata
from tasks.sample.datacomp_baselines import datacomp_step, file_digest, input_files, step_label
from tasks.sample.indicators import class_sizes_plot, cumulative_counts_plot, indicators
from tasks.sample.pool_samples import PoolShard, PoolTable, map_shards, pool_table, read_shard
from tasks.sample.recipe import Selection, check_target, parse_recipe
from tasks.sample.subset_files import reshard, sizes_path, subset_piece, write_subset
from tasks.sample.tree_sampling import (balanced_sample, centroid_distances, selected_per_cluster, top_labels,
                                        tree_labels)

SUBSET_VERSION = 3  # bump when a change alters the subset a config produces


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
    def from_dict(cls, values: dict | list | str) -> "SubsetConfig":
        """From a recipe (a list of steps, or a named recipe such as ``"datacomp:clip_l14_30"``) or a dict
        of settings; a named recipe is stored as its steps."""
        values = {"recipe": values} if isinstance(values, (list, str)) else dict(values)
        check_known_settings("subset", values, cls.__dataclass_fields__)
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
    """A cluster tree seen from the pool table: its levels, and where its inputs are among the pool's rows.

    The tree's inputs are the pool's kept samples, shard by shard in the embedding run's shard
    order (pool order when the pool was not embedded), row order inside a shard.
    """

    def __init__(self, store: Store, tree: ClusterTree, table: PoolTable, client=None):
        self.tree, self.folder, self.store, self.table = tree, tree.folder, store, table
        self.levels = load_tree(store, store.relative(tree.folder))
        self.order = _tree_shard_order(table, f"tree {tree.folder}")
        kept = np.array([int(part.sum()) for part in table.split(table.kept)], dtype=np.int64)[self.order]
        n_inputs = len(self.levels[0].labels)
        if n_inputs != int(kept.sum()):
            raise InputError(f"tree {tree.folder}: {n_inputs} inputs but pool {table.pool!r} has {int(kept.sum())} "
                             f"kept samples: its inputs are not samples of pool {table.pool!r} as resolved now; "
                             "it was made from another pool or an older download")
        self.starts = np.concatenate([[0], np.cumsum(kept)])  # tree inputs of shard order[i]: starts[i]:starts[i+1]
        self._check_made_from_pool(client)

    def _check_made_from_pool(self, client) -> None:
        """The tree's manifest names the snapshot it was made from; a tree without those hashes is
        checked by its inputs' uids against the kept samples' uids, one task per shard."""
        recorded, wanted = self.tree.manifest.get("inputs") or {}, self.table.snapshot.hashes
        if any(recorded.get(name) for name in wanted):
            if any(recorded.get(name) != wanted[name] for name in wanted):
                raise InputError(f"tree {self.folder}: made from pool content {str(recorded.get('pool'))[:16]} "
                                 f"(embeddings {str(recorded.get('embeddings'))[:16]}, filters "
                                 f"{str(recorded.get('filters'))[:16]}), not from this snapshot of pool "
                                 f"{self.table.pool!r}: its inputs are not samples of pool {self.table.pool!r} as "
                                 "resolved now; cluster the pool again")
            return
        inputs = self.store.relative(self.tree.outputs["inputs"])
        jobs = [(inputs, int(self.starts[i]), int(self.starts[i + 1]), self.table.shards[s])
                for i, s in enumerate(self.order)]
        wrong, example = 0, None
        for shard_wrong, shard_example in map_shards(client, _compare_tree_inputs, jobs, self.store):
            wrong += shard_wrong
            example = example or shard_example
        if wrong:
            raise InputError(f"tree {self.folder}: {wrong} of {len(self.levels[0].labels)} inputs are not samples of "
                             f"pool {self.table.pool!r} in its order of kept samples (e.g. {example}); it was made "
                             "from another pool or an older download")

    def rows(self) -> np.ndarray:
        """int64: the pool row of every tree input."""
        offsets, split = self.table.offsets, self.table.split(self.table.kept)
        return np.concatenate([np.flatnonzero(split[s]) + offsets[s] for s in self.order])

    def counts(self, mask: np.ndarray) -> list[np.ndarray]:
        """For every level, level 1 first: the samples under ``mask`` (over the pool's rows) in each cluster."""
        return selected_per_cluster(self.levels, np.flatnonzero(mask[self.rows()]))

    def top_distances(self, client=None) -> np.ndarray:
        """float32: every tree input's distance to its top-level centroid, one task per shard."""
        snapshot = self.table.snapshot
        if snapshot.embeddings is None:
            raise InputError(f"tree {self.folder}: flat sampling by distance ('c'/'f') needs the embeddings of pool "
                             f"{self.table.pool!r}, which has not been embedded and filtered")
        embeddings = {shard.shard_id: self.store.relative(shard.image_embeddings) for shard in snapshot.embeddings.shards}
        top = top_labels(tree_labels(self.levels))
        jobs = []
        for i, s in enumerate(self.order):
            shard = self.table.shards[s]
            jobs.append((embeddings[shard.shard_id], self.store.relative(shard.decisions),
                         top[self.starts[i]:self.starts[i + 1]]))
        centroids = np.asarray(self.levels[-1].centroids, dtype=np.float32)
        return np.concatenate(list(map_shards(client, _shard_top_distances, jobs, self.store, centroids,
                                              self.tree.manifest["config"]["metric"])))


def _tree_shard_order(table: PoolTable, what: str) -> list[int]:
    """The table's shards in the order the tree's inputs follow: the embedding run's, or the pool's."""
    if table.snapshot.embeddings is None:
        return list(range(len(table.shards)))
    number = {shard.shard_id: shard.number for shard in table.shards}
    order = []
    for shard in table.snapshot.embeddings.shards:
        if shard.shard_id not in number:
            raise InputError(f"{what}: embedded shard {shard.shard_id} is not a shard of pool {table.pool!r} with samples")
        order.append(number[shard.shard_id])
    if sorted(order) != list(range(len(table.shards))):
        raise InputError(f"{what}: the embedding run of pool {table.pool!r} does not cover each of its shards once")
    return order


def _compare_tree_inputs(store: Store, inputs: str, start: int, stop: int, shard: PoolShard) -> tuple[int, str | None]:
    """How many of the tree's inputs ``start:stop`` differ from the shard's kept uids, and one of them."""
    with store.open(inputs) as handle:
        parquet = pq.ParquetFile(handle)
        bounds = np.concatenate([[0], np.cumsum([parquet.metadata.row_group(g).num_rows
                                                 for g in range(parquet.num_row_groups)])])
        groups = [g for g in range(parquet.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
        uids = (parquet.read_row_groups(groups, columns=["uid"]).column("uid").to_numpy(zero_copy_only=False)
                if groups else np.zeros(0, dtype=object))
    first = int(bounds[groups[0]]) if groups else start
    uids = np.asarray(uids[start - first:stop - first]).astype(str)
    frame = read_shard(store, shard, ("uid", "kept"))
    kept = frame["uid"].to_numpy()[frame["kept"].to_numpy(dtype=bool)].astype(str)
    if len(kept) != len(uids):
        return max(len(kept), len(uids)), None
    wrong = uids != kept
    return int(wrong.sum()), (str(uids[wrong][0]) if wrong.any() else None)


def _shard_top_distances(store: Store, centroids: np.ndarray, metric: str, embeddings: str, decisions: str,
                         top: np.ndarray) -> np.ndarray:
    rows = load_kept_rows(store, embeddings, decisions)
    if len(rows) != len(top):
        raise StageFailed(f"{store.uri(embeddings)}: {len(rows)} kept rows but the tree has {len(top)} inputs there")
    return centroid_distances(rows, centroids, top, metric)


class RecipeContext:
    """What the steps read, loaded when first needed: trees and MetaCLIP matches."""

    def __init__(self, catalog: Catalog, table: PoolTable, config: SubsetConfig, trees: dict[str, dict],
                 client=None):
        self.catalog, self.store = catalog, catalog.store
        self.table, self.config, self.tree_manifests, self.client = table, config, trees, client
        self.trees: dict[str, TreeView] = {}
        self.metadata = None
        self._matches: PoolMatches | None = None

    def tree(self, name: str) -> TreeView:
        if name not in self.tree_manifests:
            raise InputError(f"recipe: tree={name!r} is not one of the trees given ({sorted(self.tree_manifests)})")
        if name not in self.trees:
            self.trees[name] = TreeView(self.store, ClusterTree(self.tree_manifests[name]), self.table, self.client)
        return self.trees[name]

    @property
    def matched(self) -> bool:
        """Whether the MetaCLIP matches were made (a step or the report needed them)."""
        return self._matches is not None

    def matches(self) -> PoolMatches:
        if self._matches is None:
            self.metadata = pool_metadata(self.catalog, self.table, self.config.metadata, self.config.ngrams,
                                          self.client)
            self._matches = match_pool(self.catalog, self.table, self.metadata, self.client)
        return self._matches


def stage_counts(context: RecipeContext, mask: np.ndarray) -> dict:
    """The counts the indicators read for the samples under ``mask``: per tree level, per metadata entry."""
    counts: dict = {"samples": int(mask.sum())}
    for tree_name, tree in context.trees.items():
        for level, level_counts in enumerate(tree.counts(mask), 1):
            counts[f"{tree_name} level {level}"] = level_counts
    if context.matched:
        counts["metadata entries"] = context.matches().entry_counts(mask)[0]
    return counts


def run_recipe(context: RecipeContext) -> tuple[Selection, list[dict]]:
    """Apply every step; returns the final selection and, for the pool and after each step, its counts
    (:func:`stage_counts`)."""
    selection = Selection(candidates=np.ones(len(context.table), dtype=bool))
    stages = [stage_counts(context, selection.candidates)]
    for number, step in enumerate(context.config.recipe, 1):
        figures = STEP_RUNNERS[step["step"]](context, selection, step, number)
        selection.figures.append({"step": step_label(step), "size": selection.size, **figures})
        stages.append(stage_counts(context, selection.candidates))
    return selection, stages


def _filters_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    if not context.table.filtered:
        stale = context.table.snapshot.stale
        raise InputError(f"recipe step {number} (filters): pool {context.table.pool!r} has not been filtered"
                         f"{f' ({stale})' if stale else ''}; "
                         f"run pool_refresh with an embedder and filters")
    selection.keep_only(context.table.kept)
    return {}


def _random_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    rows = np.flatnonzero(selection.candidates)
    target = check_target(step, number, len(rows))
    selection.narrow(np.random.default_rng(step["seed"]).choice(rows, size=target, replace=False))
    return {}


def _hkmeans_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    tree = context.tree(step["tree"])
    rows = tree.rows()
    in_tree = selection.candidates[rows]
    target = check_target(step, number, int(in_tree.sum()), "candidates in the cluster tree")
    distances = (tree.top_distances(context.client) if step["mode"] == "flat" and step["selection"] != "r"
                 else None)
    chosen = balanced_sample(tree.levels, target, mode=step["mode"], selection=step["selection"], seed=step["seed"],
                             candidates=in_tree, distances=distances)
    outside = selection.size - int(in_tree.sum())
    selection.narrow(rows[chosen])
    return {"tree": tree.folder, "candidates_outside_tree": outside}


def _metaclip_step(context: RecipeContext, selection: Selection, step: dict, number: int) -> dict:
    matches = context.matches()
    mask = selection.candidates
    counts, n_matched = matches.entry_counts(mask)
    rows = np.flatnonzero(mask)
    if step["matched_only"]:
        selection.narrow(rows[matches.matched(mask)])
        return {"matched": n_matched}
    if step["t"] is not None:
        t = float(step["t"])
    elif step["tail_share"] is not None:
        t = float(threshold_for_tail_share(counts, step["tail_share"]))
    else:
        target = check_target(step, number, n_matched, "candidates matching a metadata entry")
        t = matches.threshold_for_expected_size(mask, counts, n_matched, target)
        # aim 3 standard deviations above the target, so that the draw, cut to the target at
        # random, has exactly the target's size (all arms of an A/B the same size)
        spread = 3.0 * float(np.sqrt(matches.sums(mask, counts, [t])[0][1]))
        t = matches.threshold_for_expected_size(mask, counts, n_matched,
                                                min(n_matched, int(np.ceil(target + spread))))
    result = matches.draw(mask, counts, t, seed=None if step["online"] else step["seed"], keep_values=step["online"])
    figures = {"t": t, "matched": n_matched, "expected_size": result.expected_size,
               "expected_size_sd": float(np.sqrt(result.variance))}
    if step["online"]:
        keep = result.probabilities > 0
        full = np.zeros(len(mask))
        full[rows] = result.probabilities
        selection.keep_probability = full
    else:
        keep = result.keep
        figures["drawn_size"] = int(keep.sum())
        if step["target"] is not None and keep.sum() > step["target"]:
            drawn = np.flatnonzero(keep)
            keep[:] = False
            keep[np.random.default_rng(step["seed"] + 1).choice(drawn, size=step["target"], replace=False)] = True
        figures.update(_entry_balance(matches, mask, rows, keep, counts, n_matched, result.expected_size, t))
    selection.narrow(rows[keep])
    return figures


def _variance(probabilities: np.ndarray) -> np.ndarray:
    return probabilities * (1.0 - probabilities)


def _entry_balance(matches: PoolMatches, mask: np.ndarray, rows: np.ndarray, keep: np.ndarray, counts: np.ndarray,
                   n_matched: int, expected_size: float, t: float) -> dict:
    """How the draw balanced the entries: MetaCLIP's report, plus realised against expected counts."""
    final = np.zeros_like(mask)
    final[rows[keep]] = True
    after, expected = matches.after(mask, final, counts, t)
    report = {key: (value.item() if isinstance(value, np.generic) else value)
              for key, value in report_from_counts(t, len(rows), n_matched, expected_size, int(keep.sum()), counts,
                                                   after).items() if key != "counts_after"}
    head = (counts > t) & (expected > 0)
    if head.any():
        report["head_realised_over_expected_median"] = float(np.median(after[head] / expected[head]))
    return report


STEP_RUNNERS = {"filters": _filters_step, "random": _random_step, "hkmeans": _hkmeans_step,
                "metaclip": _metaclip_step, "datacomp": datacomp_step}


def subset_inputs(snapshot: PoolSnapshot, trees: dict[str, dict], files: dict[str, str] | None = None) -> dict:
    """The content hashes a subset is made from: the snapshot's manifests, every tree's and, when the
    recipe reads files outside the store (a DataComp step's entry list or target embeddings), theirs."""
    inputs = {**snapshot.hashes, "trees": {name: tree["content_hash"] for name, tree in sorted(trees.items())}}
    return {**inputs, "files": files} if files else inputs


def recipe_files(config: SubsetConfig, store: Store | None = None) -> dict[str, str]:
    """sha256 of every file the recipe reads outside the store, by path."""
    return {path: file_digest(path, store.options_for(path) if store is not None else None)
            for path in input_files(config.recipe)}


def subset_key(snapshot: PoolSnapshot, config: SubsetConfig, trees: dict[str, dict], store: Store | None = None,
               files: dict[str, str] | None = None) -> str:
    """The subset's cache key; ``files``: :func:`recipe_files`, when already hashed."""
    files = recipe_files(config, store) if files is None else files
    return hash_json({"inputs": subset_inputs(snapshot, trees, files),
                      "config": config.to_dict(), "version": SUBSET_VERSION})


def subset_folder(catalog: Catalog, snapshot: PoolSnapshot, name: str, config: SubsetConfig,
                  trees: dict[str, dict]) -> str:
    return catalog.subset_folder(snapshot.pool.name, name, subset_key(snapshot, config, trees, catalog.store))


def make_subset(catalog: Catalog, snapshot: PoolSnapshot, name: str, config: SubsetConfig,
                trees: dict[str, dict] | None = None, client=None) -> dict:
    """Run ``config``'s recipe on the snapshot's pool and write the subset; returns its manifest.

    ``client``: a ``distributed.Client`` that runs the per-shard tasks (``None``: run them here).
    """
    store = catalog.store
    trees = dict(trees or {})
    files = recipe_files(config, store)
    key = subset_key(snapshot, config, trees, files=files)
    folder = catalog.subset_folder(snapshot.pool.name, name, key)
    done = catalog.finished(folder)
    if done is not None:
        return done
    table = pool_table(store, snapshot, client)
    context = RecipeContext(catalog, table, config, trees, client)
    for tree_name in trees:
        context.tree(tree_name)
    if config.uses_metadata:
        context.matches()
    selection, stages = run_recipe(context)
    chosen = table.local_rows(np.flatnonzero(selection.candidates))
    probability = table.split(selection.keep_probability) if selection.keep_probability is not None else None
    jobs = [(shard, rows, probability[number][rows] if probability is not None else None)
            for number, (shard, rows) in enumerate(zip(table.shards, chosen)) if len(rows)]
    columns = ["uid", "key", "text"] + (["keep_probability"] if probability is not None else []) + [
        "source_shard_id", "source_tar"]
    parquet, datacomp = write_subset(store, f"{folder}/subset.parquet", f"{folder}/subset.npy",
                                     map_shards(client, subset_piece, jobs, store), columns)
    report = indicator_report(context, stages)
    outputs = {"parquet": parquet, "datacomp": datacomp,
               "indicators": store.write_json(f"{folder}/indicators.json", {**report, "steps": selection.figures}),
               **write_plots(store, folder, context, stages)}
    stats = {"steps": selection.figures, "indicators": report["final"]}
    if config.reshard and any(shard.tar is None for shard in table.shards):
        # an imported pool has no images: the subset file is the output (DataComp's resharder takes it)
        stats["reshard"] = (f"skipped: pool {snapshot.pool.name!r} was imported without images; reshard the "
                            "downloaded shards with subset.npy (DataComp's resharder)")
    elif config.reshard:
        outputs["shards"] = reshard(store, table.shards, chosen, f"{folder}/shards", config.shard_size,
                                    lambda number: shard_id(0, key, number), client)
        outputs["sizes"] = store.uri(sizes_path(f"{folder}/shards"))
    outputs["folder"] = store.uri(folder)
    manifest = Manifest(stage="subset", name=f"{snapshot.pool.name}/{name}", store=store.root, config=config.to_dict(),
                        code_version=code_version("subset", SUBSET_VERSION),
                        inputs={**subset_inputs(snapshot, trees, files),
                                "metadata": context.metadata.source if context.metadata else None},
                        outputs=outputs, rows={"pool": len(table), "subset": int(selection.size)}, stats=stats)
    return catalog.publish(folder, manifest)


def indicator_report(context: RecipeContext, stages: list[dict]) -> dict:
    """Indicators over every tree level and over the metadata entries, for the pool and after each step."""
    names = ["pool"] + [f"{number}. {step_label(step)}" for number, step in enumerate(context.config.recipe, 1)]
    options = {"long_tail_thresholds": context.config.long_tail_thresholds}
    report = [{"after": stage, **{over: (values if over == "samples" else indicators(values, **options))
                                  for over, values in counts.items()}}
              for stage, counts in zip(names, stages)]
    return {"stages": report, "final": report[-1]}


def write_plots(store: Store, folder: str, context: RecipeContext, stages: list[dict]) -> dict:
    """Cluster sizes of every tree's top level and cumulative entry counts: the pool against the subset."""
    outputs = {}
    if context.trees:
        named = {f"{tree_name} top level, {label}": stage[f"{tree_name} level {len(tree.levels)}"]
                 for tree_name, tree in context.trees.items() for label, stage in (("pool", stages[0]),
                                                                                   ("subset", stages[-1]))}
        outputs["cluster_sizes_plot"] = store.write_bytes(f"{folder}/cluster_sizes.png", class_sizes_plot(
            named, "samples per top-level cluster"))
    if context.matched:
        named = {"pool": stages[0]["metadata entries"], "subset": stages[-1]["metadata entries"]}
        outputs["entry_counts_plot"] = store.write_bytes(f"{folder}/entry_counts.png", cumulative_counts_plot(
            named, "cumulative share of entry matches"))
    return outputs
