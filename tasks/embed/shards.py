"""Read the samples of one downloaded webdataset shard.

In:  the URIs of a shard's ``.tar`` and of img2dataset's ``.parquet`` next to it.
Out: the successful samples in tar order as a data frame (``uid``, ``key``, ``text``, image
     ``bytes``, and from the parquet ``sha256``, ``width``, ``height``, ``original_width``,
     ``original_height``). A member that cannot be read is not an error here: the embedder
     records a per-sample reason for images it cannot decode.
"""

from __future__ import annotations

import json
import tarfile

import fsspec
import pandas as pd

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
PARQUET_COLUMNS = ["key", "sha256", "width", "height", "original_width", "original_height"]


def read_shard(tar_uri: str, parquet_uri: str) -> pd.DataFrame:
    records: dict[str, dict] = {}
    with fsspec.open(tar_uri, "rb") as handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            data = tar.extractfile(member).read()
            record = records.setdefault(key, {"key": key})
            if ext in IMAGE_EXTENSIONS:
                record["bytes"] = data
            elif ext == "txt":
                record["text"] = data.decode("utf-8", errors="replace")
            elif ext == "json":
                record["uid"] = json.loads(data).get("uid")
    frame = pd.DataFrame(list(records.values()), columns=["key", "uid", "text", "bytes"])
    frame["text"] = frame["text"].fillna("")
    with fsspec.open(parquet_uri, "rb") as handle:
        meta = pd.read_parquet(handle)
    meta = meta.loc[meta["status"] == "success", [c for c in PARQUET_COLUMNS if c in meta.columns]]
    return frame.merge(meta, on="key", how="left")
