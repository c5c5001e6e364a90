"""Read, validate and slice a pool index.

In:  a parquet file or a folder of parquet files (local or ``s3://``) with at least ``uid``,
     ``url`` and ``text`` (DataComp's index columns; others are kept).
Out: :func:`read_pool_index` returns one data frame (files in name order, rows in file order)
     or raises :class:`~tasks.common.errors.InputError` naming the file, column or rows at fault
     (:func:`check_index_files`: the part of those checks that reads only the files' footers);
     :func:`plan_slices` cuts it into contiguous slices, each with a content hash, so a slice's
     cache key changes only when its own rows change.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.common.errors import InputError
from tasks.common.hashing import hash_columns

REQUIRED_COLUMNS = ("uid", "url", "text")
UID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
# Columns img2dataset writes itself; index columns of the same name are not passed through.
IMG2DATASET_COLUMNS = {"key", "status", "error_message", "width", "height", "original_width",
                       "original_height", "exif", "sha256", "md5", "caption", "url"}


def _example(values, limit: int = 3) -> str:
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "...'"


def _scheme_counts(urls: pd.Series) -> str:
    """``'file: 2, ftp: 1, none: 1'``: how many of ``urls`` have each scheme, most first (``none``: no scheme)."""
    schemes = urls.astype("string").str.extract(r"^([A-Za-z][A-Za-z0-9+.-]*):", expand=False).str.lower()
    counts = schemes.fillna("none").value_counts().sort_index().sort_values(ascending=False, kind="stable")
    return ", ".join(f"{scheme}: {int(n)}" for scheme, n in counts.items())


def list_index_files(uri: str, storage_options: dict | None = None) -> list[str]:
    """The parquet files of ``uri``: the file itself, or the ``*.parquet`` files of a folder."""
    fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol == "file" else f"{protocol}://"
    try:
        is_dir = fs.isdir(path)
        exists = is_dir or fs.exists(path)
    except (PermissionError, ValueError) as exc:  # the user's URI or rights; other errors (network) are retried
        raise InputError(f"pool_index {uri!r}: cannot be read: {type(exc).__name__}: {exc}") from exc
    if not exists:
        raise InputError(f"pool_index {uri!r}: no such file or folder")
    if is_dir:
        files = sorted(p for p in fs.find(path) if p.endswith(".parquet") and "/_" not in p[len(path):])
        if not files:
            raise InputError(f"pool_index {uri!r}: the folder holds no .parquet files")
        return [prefix + f for f in files]
    return [prefix + path]


def read_pool_index(uri: str, storage_options: dict | None = None) -> pd.DataFrame:
    """Read and validate the pool index at ``uri`` (a parquet file or a folder of them)."""
    frames = []
    for file in list_index_files(uri, storage_options):
        try:
            with fsspec.open(file, "rb", **(storage_options or {})) as handle:
                table = pq.read_table(handle)
        except (pa.ArrowInvalid, PermissionError, FileNotFoundError) as exc:  # network errors are retried
            raise InputError(f"pool_index file {file!r} is not a readable parquet file: {exc}") from exc
        _check_columns(file, table.column_names)
        frame = table.to_pandas()
        frame.attrs = {}
        frame["_file"] = file
        frames.append(frame)
    index = pd.concat(frames, ignore_index=True)
    if len(index) == 0:
        raise InputError(f"pool_index {uri!r}: the pool is empty (0 rows)")
    _validate_rows(index)
    return index.drop(columns="_file")


def check_index_files(uri: str, storage_options: dict | None = None) -> list[str]:
    """The checks of :func:`read_pool_index` that need only the parquet footers (files readable, columns
    present, rows in all), for a command line to run before anything starts; returns the files."""
    files = list_index_files(uri, storage_options)
    rows = 0
    for file in files:
        try:
            with fsspec.open(file, "rb", **(storage_options or {})) as handle:
                footer = pq.ParquetFile(handle).metadata
        except (pa.ArrowInvalid, PermissionError, FileNotFoundError) as exc:
            raise InputError(f"pool_index file {file!r} is not a readable parquet file: {exc}") from exc
        _check_columns(file, footer.schema.to_arrow_schema().names)
        rows += footer.num_rows
    if rows == 0:
        raise InputError(f"pool_index {uri!r}: the pool is empty (0 rows)")
    return files


def _check_columns(file: str, names: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        hints = []
        for column in missing:
            close = difflib.get_close_matches(column, names, n=1, cutoff=0.5)
            close = close or [c for c in names if c.lower() == column]
            hints.append(f"{column!r}" + (f" (found {close[0]!r}: rename it)" if close else ""))
        raise InputError(f"pool_index file {file!r}: missing column {', '.join(hints)}; it has {names}")


def _validate_rows(index: pd.DataFrame) -> None:
    uid = index["uid"].astype("string")
    bad_uid = uid.isna() | ~uid.fillna("").str.fullmatch(UID_PATTERN)
    if bad_uid.any():
        rows = index[bad_uid]
        raise InputError(f"pool_index file {rows['_file'].iloc[0]!r}: column 'uid' must hold 32 lower-case hex "
                         f"characters; {int(bad_uid.sum())} rows do not, e.g. {_example(rows['uid'])}")
    duplicated = uid.duplicated(keep=False)
    if duplicated.any():
        raise InputError(f"pool_index {index['_file'].iloc[0]!r}: column 'uid' has {int(duplicated.sum())} rows "
                         f"with repeated uids, e.g. {_example(uid[duplicated].unique())}")
    url = index["url"].astype("string")
    bad_url = url.isna() | ~url.fillna("").str.match(r"^https?://[^/\s]+", case=False)
    if bad_url.any():
        rows = index[bad_url]
        raise InputError(f"pool_index file {rows['_file'].iloc[0]!r}: column 'url' must hold http(s) URLs; "
                         f"{int(bad_url.sum())} rows do not, e.g. "
                         + "; ".join(f"uid {uid} has {_short(url)}" for uid, url in zip(rows["uid"][:3], rows["url"][:3]))
                         + f" (by scheme: {_scheme_counts(rows['url'])}). Other schemes (file://, ftp://, data:, "
                         "...) are never downloaded: they would read local files or skip the web's checks")
    not_text = index["text"].notna() & ~index["text"].map(lambda v: isinstance(v, str))
    if not_text.any():
        raise InputError(f"pool_index file {index.loc[not_text, '_file'].iloc[0]!r}: column 'text' must hold "
                         f"strings; {int(not_text.sum())} rows do not")


@dataclass(frozen=True)
class SlicePlan:
    """One independent unit of download work: rows ``start:stop`` of the index."""

    pool: str
    index: int
    start: int
    stop: int
    content_hash: str

    @property
    def n_rows(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return asdict(self)


def passthrough_columns(index: pd.DataFrame) -> list[str]:
    """Index columns img2dataset should save with each sample (uid first)."""
    return ["uid"] + [c for c in index.columns if c not in IMG2DATASET_COLUMNS and c not in ("uid", "text")]


def plan_slices(index: pd.DataFrame, pool: str, slice_size: int) -> list[SlicePlan]:
    if slice_size < 1:
        raise InputError(f"slice_size: must be at least 1, got {slice_size}")
    columns = ["uid", "url", "text"] + [c for c in passthrough_columns(index) if c != "uid"]
    plans = []
    for number, start in enumerate(range(0, len(index), slice_size)):
        stop = min(start + slice_size, len(index))
        plans.append(SlicePlan(pool, number, start, stop, hash_columns(index.iloc[start:stop], columns)))
    return plans
