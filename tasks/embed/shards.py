"""Read the samples of one downloaded webdataset shard.

In:  the URIs of a shard's ``.tar`` and of img2dataset's ``.parquet`` next to it.
Out: the successful samples in tar order as a data frame (``uid``, ``key``, ``text``, image
     ``bytes``, and from the parquet ``sha256``, ``width``, ``height``, ``original_width``,
     ``original_height``). A member that cannot be decoded is not an error here: the embedder
     records a per-sample reason for images it cannot decode. A damaged tar, or one holding
     another number of samples than the parquet's successes, raises
     :class:`~tasks.common.errors.StageFailed` naming the shard (see :mod:`tasks.common.webdataset`);
     so does a parquet whose successes are not the number recorded for the shard in the pool's
     manifest (``recorded``): a shard is never read shorter than it was published.
"""

from __future__ import annotations

import json

import fsspec
import pandas as pd

from tasks.common.errors import StageFailed
from tasks.common.webdataset import iter_samples

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARQUET_COLUMNS = ["key", "sha256", "width", "height", "original_width", "original_height"]


def read_shard(tar_uri: str, parquet_uri: str, storage_options: dict | None = None,
               recorded: int | None = None) -> pd.DataFrame:
    """``storage_options``: fsspec's options for the shard's filesystem (the store's, credentials included);
    ``recorded``: the shard's sample count in the pool's manifest (``n_success``), when known."""
    with fsspec.open(parquet_uri, "rb", **(storage_options or {})) as handle:
        meta = pd.read_parquet(handle)
    meta = meta.loc[meta["status"] == "success", [c for c in PARQUET_COLUMNS if c in meta.columns]]
    if recorded is not None and len(meta) != recorded:
        raise StageFailed(f"shard {tar_uri}: its table {parquet_uri} lists {len(meta)} successful samples but "
                          f"{recorded} were recorded for it in the pool's manifest; the shard changed after it "
                          "was published")
    records = []
    for key, files in iter_samples(tar_uri, expected=len(meta), storage_options=storage_options):
        key = key.rpartition("/")[2]  # img2dataset's parquet keys are file names
        record = {"key": key}
        for ext, data in files.items():
            if ext in IMAGE_EXTENSIONS:
                record["bytes"] = data
            elif ext == "txt":
                record["text"] = data.decode("utf-8", errors="replace")
            elif ext == "json":
                record["uid"] = json.loads(data).get("uid")
        records.append(record)
    frame = pd.DataFrame(records, columns=["key", "uid", "text", "bytes"])
    frame["text"] = frame["text"].fillna("")
    return frame.merge(meta, on="key", how="left")
