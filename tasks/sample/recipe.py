"""A curation recipe: an ordered list of steps, each narrowing the samples that stay candidates.

In:  a list of step dicts, e.g. ``[{"step": "filters"}, {"step": "metaclip", "tail_share": 0.06},
     {"step": "hkmeans", "target": 4000}]``, or a named recipe (``"datacomp:clip_l14_30"``: one of
     DataComp's baselines as the only step); while running, the pool's samples and the inputs a
     step needs (the cluster tree, the MetaCLIP matches).
Out: :func:`parse_recipe` validates and fills defaults (an error names the step and the
     setting); :class:`Selection` holds, row-aligned with the pool table (global row numbers: shard
     offset plus row), the candidate mask (one byte a sample) and, for MetaCLIP's online mode, each
     sample's keep probability, and each step's own figures.

Steps:

- ``filters``: keep what the embed-and-filter stage kept;
- ``random``: a uniform random ``target`` of the candidates;
- ``metaclip``: MetaCLIP balancing over the candidates' entry counts with a threshold ``t``, or a
  ``t`` derived from a ``tail_share`` or from a ``target`` size; ``matched_only`` keeps every
  candidate matching an entry, without balancing; ``online`` keeps every candidate with a keep
  probability above zero and stores the probabilities for the training loader to re-draw;
- ``hkmeans``: balanced sampling of ``target`` candidates from the cluster tree (``mode``
  hierarchical or flat, ``selection`` r, c or f); candidates outside the tree cannot be drawn;
- ``datacomp``: one of DataComp's filtering baselines (``baseline``: ``no_filter``, ``basic``,
  ``clip_score``, ``clip_l14_30``, ``laion2b``, ``text_based``, ``image_based``,
  ``image_based_clip_l14_30``), each with its own settings (:mod:`tasks.sample.datacomp_baselines`);
  it keeps the candidates the baseline keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tasks.common.errors import InputError
from tasks.sample.datacomp_baselines import datacomp_settings, named_recipe
from tasks.sample.tree_sampling import MODES, SELECTIONS

STEP_SETTINGS: dict[str, dict] = {
    "filters": {},
    "random": {"target": None, "seed": 0},
    "metaclip": {"t": None, "tail_share": None, "target": None, "matched_only": False, "online": False, "seed": 0},
    "hkmeans": {"target": None, "mode": "hierarchical", "selection": "r", "seed": 0, "tree": "tree"},
    "datacomp": {"baseline": None},  # and the baseline's own settings (datacomp_baselines.BASELINES)
}


def parse_recipe(steps: list[dict] | str | None) -> list[dict]:
    """Validated steps with their defaults filled in; a named recipe (a string) becomes its steps."""
    if isinstance(steps, str):
        steps = named_recipe(steps)
    if not steps:
        raise InputError("recipe: no step; e.g. [{\"step\": \"hkmeans\", \"target\": 10000}]")
    parsed = []
    for number, raw in enumerate(steps, 1):
        raw = dict(raw)
        kind = raw.pop("step", None)
        if kind not in STEP_SETTINGS:
            raise InputError(f"recipe step {number}: step={kind!r}; expected one of {', '.join(STEP_SETTINGS)}")
        if kind == "datacomp":
            parsed.append(datacomp_settings(f"recipe step {number} (datacomp)", raw))
            continue
        unknown = sorted(set(raw) - set(STEP_SETTINGS[kind]))
        if unknown:
            raise InputError(f"recipe step {number} ({kind}): unknown setting(s) {unknown}; "
                             f"known: {sorted(STEP_SETTINGS[kind])}")
        step = {"step": kind, **STEP_SETTINGS[kind], **raw}
        _check_step(number, step)
        parsed.append(step)
    return parsed


def _check_step(number: int, step: dict) -> None:
    where = f"recipe step {number} ({step['step']})"
    target = step.get("target")
    if target is not None and (not isinstance(target, int) or target <= 0):
        raise InputError(f"{where}: target={target!r} must be a positive integer")
    if step["step"] in ("random", "hkmeans") and target is None:
        raise InputError(f"{where}: target is required")
    if step["step"] == "hkmeans":
        if step["mode"] not in MODES:
            raise InputError(f"{where}: mode={step['mode']!r}; expected one of {', '.join(MODES)}")
        if step["selection"] not in SELECTIONS:
            raise InputError(f"{where}: selection={step['selection']!r}; expected one of {', '.join(SELECTIONS)}")
    if step["step"] == "metaclip":
        given = [name for name in ("t", "tail_share", "target") if step[name] is not None]
        if step["matched_only"] and given:
            raise InputError(f"{where}: matched_only does not balance; drop {given}")
        if not step["matched_only"] and len(given) != 1:
            raise InputError(f"{where}: give exactly one of t, tail_share or target (got {given or 'none'}), "
                             f"or matched_only=true")
        if step["t"] is not None and not step["t"] > 0:
            raise InputError(f"{where}: t={step['t']!r} must be above zero")
        if step["tail_share"] is not None and not 0 < step["tail_share"] < 1:
            raise InputError(f"{where}: tail_share={step['tail_share']!r} must be between 0 and 1")


@dataclass
class Selection:
    """The candidates after each step, row-aligned with the pool table."""

    candidates: np.ndarray
    keep_probability: np.ndarray | None = None
    figures: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int:
        return int(self.candidates.sum())

    def keep_only(self, mask: np.ndarray) -> None:
        """Keep only the candidates under ``mask`` (a boolean mask over the pool's rows)."""
        self.candidates = self.candidates & mask

    def narrow(self, rows: np.ndarray) -> None:
        """Keep only the candidate rows ``rows``."""
        chosen = np.zeros_like(self.candidates)
        chosen[rows] = True
        if (chosen & ~self.candidates).any():
            raise AssertionError("a step chose a sample that was not a candidate")
        self.candidates = chosen


def check_target(step: dict, number: int, available: int, what: str = "candidates") -> int:
    """The step's target, or an error naming it when it exceeds what is left to choose from."""
    if step["target"] > available:
        raise InputError(f"recipe step {number} ({step['step']}): target={step['target']} is larger than the "
                         f"{available} {what} left at this step")
    return int(step["target"])
