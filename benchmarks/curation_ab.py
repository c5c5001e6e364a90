"""Benchmark: the demo pool's curation A/B over several seeds per arm, so that its ranking is settled beyond noise.

    .venv/bin/python benchmarks/curation_ab.py [--workdir .demo] [--seeds 3] [--arms random,composition,...]
        [--samples-seen N | --curve-lengths 5120,10240,20480] [--out benchmarks/results/curation_ab.json]

Runs on what ``make demo`` left in ``--workdir``: the store ``<workdir>/store`` with the pool
``demo`` downloaded, embedded, filtered and clustered (both of the demo's trees), the truth file
``<workdir>/web/truth.parquet`` and the evaluation sets ``<workdir>/eval/tasklist.yml`` (made
again, the same deterministic way, if only they are missing). It stops with one error naming the
missing path when the demo has not been run.

Arms, all at the same subset size (``subset_size`` of what the filters kept: 4,000 on the default
pool) and the same samples seen: ``random``, ``filters``, ``hkmeans 1 level`` (balanced sampling
from the demo's 1-level tree), ``hkmeans 4 levels`` (from its 4-level tree), ``metaclip`` and
``composition``: the recipes of the demo's A/B (``demo_subsets``), with the seed ``s`` in every
sampling step (random, MetaCLIP, hkmeans). For seed ``s`` the subset seed and the training seed
are both ``s``; training is the ``tiny`` scale with batches of 128, as the demo's A/B. Subsets are
made by the ``curate`` flow from the demo's existing trees (the same clustering settings, so the
tree is found in the store, not fitted again), trainings by the ``train_eval`` flow.

Per arm and seed it measures acc@1 on ``demo/concepts``, the mean per-class recall, the tail
recall (mean recall of the 50 concepts rarest in the downloaded pool, by the truth file, as the
demo's A/B table computes it) and the ``demo/retrieval`` score (mean recall@1); then per arm the
mean and standard error over seeds, and per arm a two-sided paired t-test against ``random``
over seeds (pairs matched by seed) on each metric.

Training length: unless ``--samples-seen`` is given, a short curve decides it first: the
``random`` and ``composition`` arms are trained with seeds 0 and 1 at each ``--curve-lengths``
length, shortest first; per length the gap is mean(composition) - mean(random) acc@1 and the
spread the larger of the two arms' standard deviations over the 2 seeds. The shortest length
where the spread is at most half the gap is used, and longer ones are not trained (if none
qualifies, the longest, and the output says so).

Caching: ``curate`` and ``train_eval`` keep every finished subset and training in the store,
keyed by its data and settings, so a rerun (after an interruption, with more seeds or arms) reuses
every training that finished, and the curve's runs are the main run's where arm, seed and length
coincide. Seed 0 uses the demo's own subset and run names, so at the demo's length (5,120
samples seen) the demo's A/B trainings are reused as seed 0; seeds s > 0 are named
``ab-<arm>-seed<s>``. Nothing the demo wrote is changed.

The last line printed is one JSON object (also written atomically to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pandas as pd  # noqa: E402

from flows.curate import curate  # noqa: E402
from flows.demo import AB_TRAINING  # noqa: E402
from flows.train_eval import train_eval  # noqa: E402
from tasks.cluster.run import ClusterConfig, tree_folder  # noqa: E402
from tasks.common.catalog import Catalog, PoolSnapshot, run_name  # noqa: E402
from tasks.common.cli import CliParser, command_line  # noqa: E402
from tasks.common.errors import InputError  # noqa: E402
from tasks.common.prefect_settings import use_project_settings  # noqa: E402
from tasks.common.store import Store  # noqa: E402
from tasks.demo_pool import truth_checks  # noqa: E402
from tasks.demo_pool.ab_statistics import choose_length, paired_test, summarise  # noqa: E402
from tasks.demo_pool.curation_ab import demo_subsets, subset_size  # noqa: E402
from tasks.demo_pool.eval_sets import generate_eval_sets  # noqa: E402
from tasks.demo_pool.task import demo_trees  # noqa: E402
from tasks.train.scales import scale_config  # noqa: E402

POOL = "demo"
FOUR_LEVELS, ONE_LEVEL = "4 levels, resampling", "1 level"  # the demo's tree names (demo_trees)
# arm -> (the demo tree its subset is made with, the demo's name for the subset)
ARMS: dict[str, tuple[str, str]] = {
    "random": (FOUR_LEVELS, "random"),
    "filters": (FOUR_LEVELS, "filters"),
    "hkmeans 1 level": (ONE_LEVEL, "hkmeans 1 level"),
    "hkmeans 4 levels": (FOUR_LEVELS, "hkmeans"),
    "metaclip": (FOUR_LEVELS, "metaclip"),
    "composition": (FOUR_LEVELS, "composition"),
}
SEEDED_STEPS = ("random", "metaclip", "hkmeans")
METRICS = ("acc1", "mean_per_class_recall", "tail_recall", "retrieval_r1")
METRIC_TITLES = {"acc1": "acc@1", "mean_per_class_recall": "mean class recall", "tail_recall": "tail recall",
                 "retrieval_r1": "retrieval R@1"}
CURVE_ARMS, CURVE_SEEDS = ("random", "composition"), (0, 1)
DEFAULT_CURVE = (5120, 10240, 20480)


@dataclass(frozen=True)
class DemoRun:
    """What ``make demo`` left: the store, the filtered pool's snapshot, the truth, the task list and the trees."""

    store: str
    snapshot: PoolSnapshot
    kept: int
    truth: str
    tasklist: str
    clustering: dict[str, dict]  # demo tree name -> its clustering settings (seed included)


def missing(path: Path | str, what: str) -> InputError:
    return InputError(f"{what}: {path} does not exist; run `make demo` first (or give --workdir)")


def demo_run(workdir: str, demo_seed: int | None) -> DemoRun:
    """The demo's outputs in ``workdir``, checked; an error names the first missing path.

    ``demo_seed``: the seed the demo ran with (it seeds its trees and evaluation sets); ``None``:
    the one its evaluation sets were generated with, else 0.
    """
    work = Path(workdir).absolute()
    store_dir, truth = work / "store", work / "web" / "truth.parquet"
    if not store_dir.is_dir():
        raise missing(store_dir, "the demo's store")
    if not truth.is_file():
        raise missing(truth, "the demo's truth file")
    store = Store(str(store_dir))
    pool_manifest = store_dir / Catalog.pool_manifest(POOL)
    if not pool_manifest.is_file():
        raise missing(pool_manifest, "the demo pool")
    catalog = Catalog(store)
    snapshot = catalog.snapshot(POOL)
    _, filters = snapshot.require_filtered("the curation A/B")
    kept = int(filters.manifest["rows"]["kept"])
    eval_dir = work / "eval"
    marker = eval_dir / "generated.json"
    if demo_seed is None:
        demo_seed = int(json.loads(marker.read_text())["seed"]) if marker.is_file() else 0
    tasklist = eval_dir / "tasklist.yml"
    if not tasklist.is_file():  # as the demo makes them: deterministic in the seed
        tasklist = Path(generate_eval_sets(eval_dir, seed=demo_seed))
    clustering = {name: {**settings, "seed": demo_seed} for name, settings in demo_trees(kept).items()}
    for name, settings in clustering.items():
        folder = tree_folder(catalog, snapshot, ClusterConfig.from_dict(settings))
        if catalog.read_manifest(folder) is None:
            raise missing(store_dir / Catalog.manifest_path(folder),
                          f"the demo's {name} tree (seed {demo_seed}; give --demo-seed if the demo ran with another)")
    return DemoRun(str(store_dir), snapshot, kept, str(truth), str(tasklist), clustering)


def subset_name(arm: str, seed: int) -> str:
    """The demo's subset name for seed 0 (its subsets are reused), ``<name> seed <s>`` otherwise."""
    name = ARMS[arm][1]
    return name if seed == 0 else f"{name} seed {seed}"


def training_name(arm: str, seed: int) -> str:
    """The demo's run name for seed 0 (``ab-<name>``), ``ab-<name>-seed<s>`` otherwise."""
    return run_name("ab", ARMS[arm][1]) if seed == 0 else run_name("ab", ARMS[arm][1], f"seed{seed}")


def seeded_recipe(subset: dict, seed: int) -> dict:
    """A ``demo_subsets`` subset with ``seed`` in every sampling step, resharded (it is trained on)."""
    return {**subset, "reshard": True,
            "recipe": [{**step, "seed": seed} if step["step"] in SEEDED_STEPS else dict(step)
                       for step in subset["recipe"]]}


def plan_subsets(kept: int, wanted: list[tuple[str, int]]) -> dict[str, dict[str, dict]]:
    """demo tree name -> subset name -> settings, for every (arm, seed) in ``wanted``."""
    recipes = demo_subsets(kept)
    plan: dict[str, dict[str, dict]] = {}
    for arm, seed in wanted:
        tree, name = ARMS[arm]
        plan.setdefault(tree, {})[subset_name(arm, seed)] = seeded_recipe(recipes[tree][name], seed)
    return plan


def make_subsets(demo: DemoRun, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    """(arm, seed) -> the subset's manifest, by one ``curate`` run per demo tree (the tree found in the store)."""
    made: dict[str, dict] = {}
    for tree, subsets in plan_subsets(demo.kept, wanted).items():
        out = curate.with_options(flow_run_name=f"curate-demo-ab-{tree}")(
            store=demo.store, pool_name=POOL, clustering=demo.clustering[tree], subsets=subsets)
        made.update(out["subsets"])
    return {(arm, seed): made[subset_name(arm, seed)] for arm, seed in wanted}


def train(demo: DemoRun, subset: dict, arm: str, seed: int, samples_seen: int) -> dict:
    """``train_eval`` of one arm and seed: ``{"evaluation": manifest, "run_name", "wall_seconds", "train_seconds"}``."""
    name = training_name(arm, seed)
    started = time.perf_counter()
    out = train_eval(store=demo.store, data=subset["outputs"]["folder"], tasklist=demo.tasklist, scale="tiny",
                     overrides=overrides(samples_seen, seed), run_name=name)
    wall = time.perf_counter() - started
    print(f"trained {arm} seed {seed} at {samples_seen} samples seen ({name}): {wall:.0f} s", flush=True)
    return {"evaluation": out["evaluation"], "run_name": name, "wall_seconds": round(wall, 1),
            "train_seconds": out["train"]["stats"].get("seconds")}


def overrides(samples_seen: int, seed: int) -> dict:
    return {**AB_TRAINING, "samples_seen": samples_seen, "seed": seed}


def measure(demo: DemoRun, evaluations: dict[tuple, dict]) -> dict[tuple, dict[str, float | None]]:
    """Key -> the four metrics of its evaluation, by the demo's own A/B code (one read of the pool and truth)."""
    store = Store(demo.store)
    truth = pd.read_parquet(demo.truth, columns=["uid", "concept_id"])
    labels = {key: "|".join(map(str, key)) for key in evaluations}
    report = truth_checks.curation_ab(store, {labels[key]: evaluation for key, evaluation in evaluations.items()},
                                      [], demo.snapshot, truth)
    rows = {row["arm"]: row for row in report["arms"]}
    out = {}
    for key, evaluation in evaluations.items():
        row = rows[labels[key]]
        concepts = truth_checks.concept_line(store, evaluation)
        out[key] = {"acc1": row["acc1"], "mean_per_class_recall": concepts["metrics"]["mean_per_class_recall"],
                    "tail_recall": row["tail_recall"], "retrieval_r1": row["retrieval_r1"]}
    return out


def run_curve(demo: DemoRun, subsets: dict[tuple[str, int], dict], lengths: list[int]) -> tuple[dict, dict]:
    """Train the curve's arms and seeds length by length, shortest first, up to the first settled length (the
    choice would not change with longer ones); (choose_length's answer, (arm, seed, length) -> training record)."""
    trainings: dict[tuple, dict] = {}
    curve: dict[int, dict] = {}
    for length in lengths:
        for seed in CURVE_SEEDS:
            for arm in CURVE_ARMS:
                trainings[(arm, seed, length)] = train(demo, subsets[(arm, seed)], arm, seed, length)
        scores = measure(demo, {key: trainings[key]["evaluation"] for key in trainings if key[2] == length})
        curve[length] = {arm: [scores[(arm, seed, length)]["acc1"] for seed in CURVE_SEEDS] for arm in CURVE_ARMS}
        chosen = choose_length(curve, better="composition", baseline="random")
        print(f"curve at {length} samples seen: gap {chosen['curve'][length]['gap']}, "
              f"spread {chosen['curve'][length]['spread']}", flush=True)
        if chosen["settled"]:
            break
    return chosen, trainings


def summary(arms: list[str], seeds: list[int], scores: dict[tuple, dict]) -> tuple[dict, dict, dict, list[str]]:
    """Per arm and metric mean, se and values (seed order); p-values against random; the ranking by acc@1."""
    per_arm = {arm: {metric: described([scores[(arm, seed)][metric] for seed in seeds]) for metric in METRICS}
               for arm in arms}
    by_metric = {arm: {metric: paired_test({seed: scores[(arm, seed)][metric] for seed in seeds},
                                           {seed: scores[("random", seed)][metric] for seed in seeds})
                       for metric in METRICS} for arm in arms if arm != "random"}
    p_acc1 = {arm: tests["acc1"]["p"] for arm, tests in by_metric.items()}
    p_by_metric = {arm: {metric: test["p"] for metric, test in tests.items()} for arm, tests in by_metric.items()}
    ranking = sorted(arms, key=lambda arm: -(per_arm[arm]["acc1"]["mean"] if per_arm[arm]["acc1"]["mean"] is not None
                                             else float("-inf")))
    return per_arm, p_acc1, p_by_metric, ranking


def described(values: list[float | None]) -> dict:
    """``{"mean", "se", "values"}`` of one metric over the seeds (values in seed order)."""
    stats = summarise(values)
    return {**{key: None if stats[key] is None else round(stats[key], 6) for key in ("mean", "se")}, "values": values}


def table(per_arm: dict, p_by_metric: dict) -> str:
    """The readable table: mean ± SE per metric, and the paired test's p against random."""
    def cell(stats: dict) -> str:
        if stats["mean"] is None:
            return "n/a"
        return f"{stats['mean']:.3f}" + ("" if stats["se"] is None else f" ± {stats['se']:.3f}")

    def p_cell(p: float | None) -> str:
        return "-" if p is None else f"{p:.3g}"

    header = ["arm", *(METRIC_TITLES[m] for m in METRICS), *(f"p {METRIC_TITLES[m]}" for m in METRICS)]
    rows = [[arm, *(cell(per_arm[arm][m]) for m in METRICS),
             *(p_cell(p_by_metric.get(arm, {}).get(m)) for m in METRICS)] for arm in per_arm]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(value).ljust(width) for value, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("(mean ± standard error over seeds; p: two-sided paired t-test against random, by seed; "
                 "'-': not testable, fewer than 2 seeds or the same difference with every seed)")
    return "\n".join(lines)


def parse_list(value: str, option: str, choices: tuple[str, ...] | None = None) -> list:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise InputError(f"{option}: empty")
    if choices is None:
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise InputError(f"{option}: {value!r} must be comma-separated whole numbers") from None
        if min(numbers) <= 0:
            raise InputError(f"{option}: {value!r}: every length must be positive")
        return sorted(set(numbers))
    unknown = [part for part in parts if part not in choices]
    if unknown:
        raise InputError(f"{option}: unknown arm(s) {unknown}; known: {', '.join(choices)}")
    return parts


@command_line
def main(argv: list[str] | None = None) -> None:
    use_project_settings()  # prefect.toml, also when started from another folder
    parser = CliParser(prog="benchmarks/curation_ab.py", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=".demo", help="where `make demo` ran (its store, web root, eval sets)")
    parser.add_argument("--demo-seed", type=int, default=None,
                        help="the seed the demo ran with; default: its evaluation sets' seed, else 0")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm: 0 .. N-1 (default 3)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)} "
                                                               "(random is always included)")
    parser.add_argument("--samples-seen", type=int, default=None, help="training length; skips the curve")
    parser.add_argument("--curve", action=argparse.BooleanOptionalAction, default=None,
                        help="choose the length from a measured curve (default unless --samples-seen is given)")
    parser.add_argument("--curve-lengths", default=",".join(map(str, DEFAULT_CURVE)))
    parser.add_argument("--out", default="benchmarks/results/curation_ab.json")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise InputError(f"--seeds: {args.seeds}; at least 1 (2 or more for p-values)")
    arms = parse_list(args.arms, "--arms", tuple(ARMS))
    arms = [arm for arm in ARMS if arm in arms or arm == "random"]  # random first, in the table's order
    use_curve = args.samples_seen is None if args.curve is None else args.curve
    if use_curve and args.samples_seen is not None:
        raise InputError("--curve and --samples-seen: give one (the curve chooses the training length)")
    lengths = parse_list(args.curve_lengths, "--curve-lengths") if use_curve else []
    fixed = args.samples_seen if args.samples_seen is not None else AB_TRAINING["samples_seen"]
    for length in [*lengths, fixed]:  # a bad length is refused before anything runs
        try:
            scale_config("tiny", overrides(length, 0))
        except InputError as exc:
            raise InputError(f"{'--curve-lengths' if use_curve else '--samples-seen'}: {exc}") from None
    seeds = list(range(args.seeds))
    demo = demo_run(args.workdir, args.demo_seed)

    started = time.perf_counter()
    wanted = sorted({(arm, seed) for arm in arms for seed in seeds}
                    | ({(arm, seed) for arm in CURVE_ARMS for seed in CURVE_SEEDS} if use_curve else set()),
                    key=lambda pair: (pair[1], list(ARMS).index(pair[0])))
    subsets = make_subsets(demo, wanted)
    trainings: dict[tuple, dict] = {}
    if use_curve:
        chosen, curve_trainings = run_curve(demo, subsets, lengths)
        samples_seen, chosen_by = chosen["samples_seen"], chosen["chosen_by"]
        curve = {str(length): row for length, row in chosen["curve"].items()}
        trainings.update(curve_trainings)
    else:
        samples_seen, curve = fixed, None
        chosen_by = ("given with --samples-seen" if args.samples_seen is not None
                     else "the demo's A/B length (--no-curve)")
    print(f"training length: {samples_seen} samples seen ({chosen_by})", flush=True)
    for seed in seeds:  # seed by seed: an interrupted run leaves whole seeds behind
        for arm in arms:
            key = (arm, seed, samples_seen)
            if key not in trainings:
                trainings[key] = train(demo, subsets[(arm, seed)], arm, seed, samples_seen)
    main_keys = {(arm, seed): (arm, seed, samples_seen) for arm in arms for seed in seeds}
    measured = measure(demo, {pair: trainings[key]["evaluation"] for pair, key in main_keys.items()})
    per_arm, p_acc1, p_by_metric, ranking = summary(arms, seeds, measured)

    result = {
        "benchmark": "curation_ab",
        "samples_seen": samples_seen,
        "realised_samples_seen": scale_config("tiny", overrides(samples_seen, 0)).realised_samples_seen,
        "subset_size": subset_size(demo.kept),
        "seeds": seeds,
        "curve": curve,
        "chosen_by": chosen_by,
        "arms": per_arm,
        "p_vs_random": p_acc1,
        "p_vs_random_by_metric": p_by_metric,
        "ranking_by_acc1": ranking,
        "runs": {f"{arm} seed {seed}": {key: trainings[main_keys[(arm, seed)]][key]
                                        for key in ("run_name", "wall_seconds", "train_seconds")}
                 for arm, seed in main_keys},
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_count": os.cpu_count(),
    }
    line = json.dumps(result, allow_nan=False)
    out = Path(args.out).absolute()
    Store(str(out.parent)).write_bytes(out.name, (json.dumps(result, indent=2, allow_nan=False) + "\n").encode())
    print(f"\ncuration A/B on pool {POOL!r}: {len(seeds)} seed(s) per arm, subsets of {result['subset_size']}, "
          f"{samples_seen} samples seen ({chosen_by})")
    print(table(per_arm, p_by_metric))
    print("ranking by mean acc@1: " + " > ".join(ranking))
    print(f"written to {args.out}")
    print(line, flush=True)


if __name__ == "__main__":  # the flows start local Dask clusters (processes): keep this guard
    main()
