"""``python -m tasks.common.fscat URI``: stream a file from any fsspec filesystem to stdout.

open_clip (webdataset) reads remote shards through ``pipe:`` commands; this one needs no cloud
CLI, only the fsspec/s3fs credentials the rest of the pipeline uses.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import fsspec


OPTIONS_VARIABLE = "CURATION_FSSPEC_OPTIONS"  # JSON fsspec options (the store's), set by the parent


def main(uri: str) -> None:
    options = json.loads(os.environ.get(OPTIONS_VARIABLE) or "{}")
    with fsspec.open(uri, "rb", **options) as source:
        shutil.copyfileobj(source, sys.stdout.buffer, 1 << 20)


if __name__ == "__main__":
    main(sys.argv[1])
