"""DataComp's metadata format and the shard-folder files DataComp's and open_clip's tools read.

What the tools read (checked against their code):

- DataComp's baselines (``baselines/apply_filter.py``, ``image_based_clustering.py``) list a
  metadata folder, take every file whose name holds ``.parquet`` and read ``<stem>.npz`` next to
  it, row-aligned. They read the columns ``uid``, ``text``, ``original_width``,
  ``original_height`` and ``clip_l14_similarity_score`` or ``clip_b32_similarity_score`` (the CLIP
  score filter, for ``--arch l14`` or ``b32``), and from the npz only the one key they need:
  ``l14_img`` by default, ``b32_img`` on request. An npz without the ``b32_*`` keys therefore
  serves every default DataComp baseline; a null score column is only read when asked for.
- DataComp's ``download_upstream.py`` gives the metadata to img2dataset with ``url_col="url"``,
  ``caption_col="text"``, ``bbox_col="face_bboxes"`` (skipped with ``--skip_bbox_blurring``) and
  ``save_additional_columns=["uid"]``. A null ``face_bboxes`` reaches img2dataset's resizer as
  ``None``: no blurring, the same as an empty list.
- DataComp's ``resharder.py`` reads per input shard ``{:08d}_stats.json``'s ``successes`` (or a
  ``sizes.json`` table of shard file name -> sample count in the input folder), and the ``uid`` in
  each sample's ``.json`` member.
- open_clip (``open_clip_train/data.py`` ``get_dataset_size``) reads ``sizes.json`` in the folder
  of the first training shard: a JSON object from each shard's file name (basename) to its sample
  count; with it, training needs no ``--train-num-samples``.

In:  column arrays of one shard's samples; shard names and sample counts.
Out: :data:`METADATA_SCHEMA` (DataComp's column types: the released pools have ``float32`` scores,
     ``int64`` sizes, ``list<list<float64>>`` face boxes), :func:`metadata_table`, :func:`npz_bytes`,
     :func:`stats_from_status` (img2dataset's ``_stats.json`` fields of a shard's table; the
     ``sizes.json`` table is :func:`tasks.common.webdataset.sizes_table`).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa

from tasks.common.errors import InputError

EMBEDDING_KEYS = ("l14", "b32")  # the key prefixes of DataComp's npz files and score columns
METADATA_SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()),
    ("original_width", pa.int64()), ("original_height", pa.int64()),
    ("clip_b32_similarity_score", pa.float32()), ("clip_l14_similarity_score", pa.float32()),
    ("face_bboxes", pa.list_(pa.list_(pa.float64()))), ("sha256", pa.string()),
])
METADATA_COLUMNS = tuple(METADATA_SCHEMA.names)


def check_embeddings_key(key: str) -> str:
    if key not in EMBEDDING_KEYS:
        raise InputError(f"embeddings_key: {key!r} is not one of DataComp's {list(EMBEDDING_KEYS)}")
    return key


def score_column(key: str) -> str:
    """The CLIP score column of embeddings ``key`` (``clip_l14_similarity_score``)."""
    return f"clip_{check_embeddings_key(key)}_similarity_score"


def npz_keys(key: str) -> tuple[str, str]:
    """The npz keys of the image and text embeddings of ``key`` (``l14_img``, ``l14_txt``)."""
    check_embeddings_key(key)
    return f"{key}_img", f"{key}_txt"


def metadata_table(columns: dict[str, object]) -> pa.Table:
    """A table in DataComp's schema from ``columns`` (arrays or lists); absent columns are null."""
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for field in METADATA_SCHEMA:
        value = columns.get(field.name)
        arrays.append(pa.nulls(n, field.type) if value is None else pa.array(value, type=field.type, from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=METADATA_SCHEMA)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of float16 arrays (DataComp's released npz hold float16)."""
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(value, dtype=np.float16) for name, value in arrays.items()})
    return buffer.getvalue()


def stats_from_status(status: pd.Series, error_message: pd.Series | None = None) -> dict:
    """img2dataset's ``_stats.json`` fields of a shard, from its table's ``status`` and ``error_message``.

    ``status_dict`` counts ``success`` and each error message, as img2dataset does. The timing
    fields img2dataset also writes (``duration``, ``start_time``, ``end_time``) are left out: no
    tool reads them and an exported shard was not downloaded at export time.
    """
    status = status.astype(str)
    counts = status.value_counts()
    messages = status
    if error_message is not None:  # a failure is counted under its message, as img2dataset does
        messages = status.where(status == "success", error_message.fillna(status).astype(str))
    return {"count": int(len(status)), "successes": int(counts.get("success", 0)),
            "failed_to_download": int(counts.get("failed_to_download", 0)),
            "failed_to_resize": int(counts.get("failed_to_resize", 0)),
            "status_dict": {str(k): int(v) for k, v in messages.value_counts().sort_index().items()}}

