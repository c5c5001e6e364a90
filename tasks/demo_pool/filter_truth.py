"""How well the filters find what the demo generator planted (an evaluation step: reads the truth).

In:  the filter decisions of a pool (every sample's ``keep_<filter>`` and ``reason_<filter>``) and
     the demo pool's truth file. Out: one row per check with the planted count, the removed
     count, precision (removed samples that were planted defects) and recall (planted defects
     removed). Dedup checks are counted per duplicate group: a group of k copies needs k - 1
     removals, whichever member is kept.

Any input gives an answer (no samples, no overlap, one sample, NaN): a missing keep flag counts
as kept, a missing truth flag as not planted, and precision or recall is None where nothing was
removed or nothing planted.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# check name -> (filter, its reasons that count or None for any, truth predicate)
CHECKS = {
    "too small images": ("basic", ("too_small",), lambda t: t["too_small"]),
    "extreme aspect ratios": ("basic", ("aspect_ratio",), lambda t: t["extreme_aspect"]),
    "non-English captions": ("basic", ("not_english",), lambda t: t["caption_kind"] == "foreign"),
    "short or junk captions": ("basic", ("too_few_words", "too_short"),
                               lambda t: t["caption_kind"].isin(["short", "junk"])),
    "unsafe caption terms": ("nsfw_text", None, lambda t: t["unsafe_caption"]),
    "leaked evaluation images": ("eval_dedup", None, lambda t: t["eval_leak"]),
    "mismatched or junk captions": ("clip_score", None, lambda t: t["caption_kind"].isin(["mismatched", "junk"])),
}
DEDUP_CHECKS = {"exact duplicates": ("exact_dedup", ("exact",)),
                "near duplicates (re-encoded, resized, cropped)": ("phash_dedup", ("reencode", "resize", "crop")),
                "near duplicates without crops": ("phash_dedup", ("reencode", "resize")),
                "semantic duplicates (exact and near copies)": ("semdedup", ("exact", "reencode", "resize", "crop"))}


def _row(check, filter_name, planted, removed, true_positive, needed=None):
    needed = planted if needed is None else needed
    return {"check": check, "filter": filter_name, "planted": int(planted), "removed": int(removed),
            "precision": round(float(true_positive / removed), 3) if removed else None,
            "recall": round(float(min(true_positive, needed) / needed), 3) if needed else None}


def filter_precision_recall(decisions: pd.DataFrame, truth: pd.DataFrame) -> list[dict]:
    frame = decisions.merge(truth, on="uid", how="inner", suffixes=("", "_truth"))
    rows = []
    for check, (name, reasons, planted_of) in CHECKS.items():
        if f"keep_{name}" not in frame:
            continue
        if reasons is None:
            removed = frame[f"keep_{name}"].eq(False)  # NaN: no decision, kept
        else:
            pattern = r"(?:^|,)(?:" + "|".join(reasons) + r")(?:,|$)"
            removed = frame[f"reason_{name}"].fillna("").astype(str).str.contains(pattern)
        planted = planted_of(frame).eq(True).to_numpy()  # NaN: not planted
        rows.append(_row(check, name, planted.sum(), removed.sum(), (removed.to_numpy() & planted).sum()))
    for check, (name, kinds) in DEDUP_CHECKS.items():
        if f"keep_{name}" not in frame:
            continue
        copies = frame["dup_kind"].isin(kinds)
        group = np.where(copies, frame["dup_of"], frame["uid"])
        size = pd.Series(group).map(pd.Series(group).value_counts()).to_numpy()
        in_group = size >= 2
        removed = frame[f"keep_{name}"].eq(False).to_numpy()
        removed_per_group = pd.Series(removed & in_group).groupby(group).sum()
        needed = pd.Series(size, index=group).groupby(level=0).first() - 1
        found = int(np.minimum(removed_per_group, needed).sum())
        rows.append(_row(check, name, copies.sum(), removed.sum(), found, needed=int(needed.sum())))
        # precision: a removal is right when the sample is in any planted group of copies (a pHash
        # match of an exact duplicate is right too), whichever kinds the check's recall counts
        any_copy = frame["dup_kind"].fillna("") != ""
        any_group = np.where(any_copy, frame["dup_of"], frame["uid"])
        in_any_group = pd.Series(any_group).map(pd.Series(any_group).value_counts()).to_numpy() >= 2
        rows[-1]["precision"] = round(float((removed & in_any_group).sum() / removed.sum()), 3) if removed.sum() else None
    return rows
