"""The filter report, reduced from per-shard counts: no process sees the pool's decisions at once.

In:  one shard's decisions (``keep_<filter>``/``reason_<filter>`` per filter, ``embed_ok``,
     ``keep``) for :func:`shard_counts`; the counts of every shard for :func:`combine_counts`.
     An incremental run's old shards add ``changed`` (their old decisions that changed), summed too.
Out: :func:`filter_report`: samples and kept, removed per filter and reason, removed by that
     filter only, the overlap of every two filters, the skipped filters with why and the CLIP
     score cutoff; :func:`report_plot` draws it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from tasks.common.plots import png_bytes, subplots
from tasks.filters.incremental import combine_changed


def filter_names(frame: pd.DataFrame) -> list[str]:
    return [c.removeprefix("keep_") for c in frame.columns if c.startswith("keep_")]


def shard_counts(frame: pd.DataFrame, names: list[str]) -> dict:
    """One shard's contribution to the report (``names``: the filters that ran, in order)."""
    columns = names + ["embed"]
    removed = np.column_stack([~frame[f"keep_{n}"].to_numpy(dtype=bool) for n in names]
                              + [~frame["embed_ok"].to_numpy(dtype=bool)]).astype(np.int64)
    only = removed.sum(axis=1) == 1
    reasons = {}
    for name in columns:
        column = frame[f"reason_{name}"].astype(str)
        split = column[column != ""].str.split(",").explode()
        reasons[name] = Counter({k: int(v) for k, v in split.value_counts().items()})
    return {"names": columns, "samples": int(len(frame)), "kept": int(frame["keep"].sum()),
            "removed_by": removed.sum(axis=0), "removed_only_by": (removed & only[:, None]).sum(axis=0),
            "overlap": removed.T @ removed, "reasons": reasons}


def combine_counts(*parts: dict) -> dict:
    """The sum of several shards' counts (all made with the same filters)."""
    first = parts[0]
    reasons = {name: sum((p["reasons"][name] for p in parts), Counter()) for name in first["names"]}
    combined = {"names": first["names"], "samples": sum(p["samples"] for p in parts),
                "kept": sum(p["kept"] for p in parts), "removed_by": np.sum([p["removed_by"] for p in parts], axis=0),
                "removed_only_by": np.sum([p["removed_only_by"] for p in parts], axis=0),
                "overlap": np.sum([p["overlap"] for p in parts], axis=0), "reasons": reasons}
    if any("changed" in p for p in parts):  # an incremental run: old shards' decisions that changed
        combined["changed"] = combine_changed([p["changed"] for p in parts if "changed" in p])
    return combined


def filter_report(counts: dict, skipped: dict, clip_cutoff: float | None) -> dict:
    names = counts["names"]
    return {
        "samples": int(counts["samples"]), "kept": int(counts["kept"]),
        "removed_by": {n: int(v) for n, v in zip(names, counts["removed_by"])},
        "removed_only_by": {n: int(v) for n, v in zip(names, counts["removed_only_by"])},
        "reasons": {n: {k: int(v) for k, v in sorted(counts["reasons"][n].items())} for n in names},
        "overlap": {a: {b: int(counts["overlap"][i, j]) for j, b in enumerate(names)} for i, a in enumerate(names)},
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
