"""``python -m tasks.common.fscat URI``: stream a file from any fsspec filesystem to stdout.

open_clip (webdataset) reads remote shards through ``pipe:`` commands; this one needs no cloud
CLI, only the fsspec/s3fs credentials the rest of the pipeline uses.
"""

from __future__ import annotations

import shutil
import sys

import fsspec


def main(uri: str) -> None:
    with fsspec.open(uri, "rb") as source:
        shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)


if __name__ == "__main__":
    main(sys.argv[1])
