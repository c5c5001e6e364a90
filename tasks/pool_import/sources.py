"""Sources of pools that arrive embedded: detect the format, pair the shards, read their headers.

In:  a source folder (local path or fsspec URI such as ``s3://...``) with fsspec options, and a
     format: ``"datacomp"``, ``"clip_retrieval"`` or ``"auto"``.
Out: :func:`list_source`: the format and the source's shards (:class:`SourceShard`: its files,
     in sorted source order), an :class:`~tasks.common.errors.InputError` naming the file for a
     shard missing one of its files, an empty source or an unknown format;
     :func:`read_header`: a shard's :class:`ShardHeader` from the files' headers only (the
     parquet footer through pyarrow's metadata, the npz's zip directory and each array's npy
     header, an npy's header), never the arrays; :func:`read_shard_data`: one shard's columns and
     embeddings; :func:`shard_uids`: one shard's uids (given or minted).

The two layouts:

- DataComp's released metadata (``download_upstream.py --skip_shards``): per shard
  ``<NNNNNNNN>.parquet`` (``uid``, ``url``, ``text``, ``original_width``, ``original_height``,
  ``clip_b32_similarity_score``, ``clip_l14_similarity_score``, ``face_bboxes``, ``sha256``) and the
  row-aligned ``<NNNNNNNN>.npz`` of float16 ``b32_img``, ``b32_txt``, ``l14_img``, ``l14_txt``;
- clip-retrieval's inference output: ``img_emb/img_emb_<n>.npy``, ``text_emb/text_emb_<n>.npy`` and
  ``metadata/metadata_<n>.parquet`` (``caption``, ``url`` or ``image_path``, maybe ``key`` and
  metadata columns such as ``width``, ``height``, ``original_width``, ``original_height``,
  ``sha256``); ``<n>`` is sorted as a number. It has no uid: a ``uid`` column is used when there
  is one, else every row gets ``md5(url or image_path + "\\t" + caption)`` in hex
  (:func:`mint_uids`), so the same sample gets the same uid in every import.

A shard's **content hash** (its ``shard_id`` is made from it) is cheap by design, so that the plan
can check every shard before anything is written without reading the whole source twice: the
sha256 of, for each of its files, the name, the size, the object store's ETag (an md5 of the
content for S3 uploads in one part) or, on a local disk, the modification time, and the header
bytes read anyway: the parquet footer (schema, rows, every column chunk's sizes and statistics)
and, for an npz, its zip directory (the CRC-32 of every array's bytes). A changed source always
gets new ids; a copied or touched local source does too, and is imported again.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import fsspec
import numpy as np
import pandas as pd

from tasks.common.errors import InputError

FORMATS = ("datacomp", "clip_retrieval")
EMBEDDINGS = ("l14", "b32")
DATACOMP_COLUMNS = ("uid", "url", "text", "original_width", "original_height", "clip_b32_similarity_score",
                    "clip_l14_similarity_score", "sha256")
FACE_BOXES = "face_bboxes"  # carried when present: DataComp's download blurs the faces it lists
DATACOMP_SCORES = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}
CARRIED_SCORES = {"clip_b32_similarity_score": "clip_b32_score", "clip_l14_similarity_score": "clip_l14_score"}
SIZE_COLUMNS = ("width", "height", "original_width", "original_height")
UID = re.compile(r"^[0-9a-f]{32}$")
_NUMBERED = {"img_emb": re.compile(r"^img_emb_(\d+)\.npy$"), "text_emb": re.compile(r"^text_emb_(\d+)\.npy$"),
             "metadata": re.compile(r"^metadata_(\d+)\.parquet$")}
_DATACOMP = re.compile(r"^([^/]+)\.(parquet|npz)$")  # any stem: the released files are named by a hex hash
HEADER_THREADS = 16


@dataclass(frozen=True)
class SourceShard:
    """One source shard: its position in sorted source order, its name and its files (URIs)."""

    number: int
    name: str  # DataComp: the file stem (a hex hash in the released pools); clip-retrieval: the partition number
    table: str  # the parquet
    image: str  # DataComp: the npz (both matrices); clip-retrieval: img_emb_<n>.npy
    text: str | None = None  # clip-retrieval: text_emb_<n>.npy

    def files(self) -> list[str]:
        return [f for f in (self.table, self.image, self.text) if f]

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ShardHeader:
    """What a shard's headers say: rows, columns, embedding shapes and dtypes, and its content hash."""

    rows: int
    columns: list[str]
    arrays: dict[str, dict]  # name -> {"shape": [...], "dtype": "float16"}
    content_hash: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _filesystem(source: str, storage_options: dict | None):
    fs, root = fsspec.core.url_to_fs(source, **(storage_options or {}))
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return fs, root.rstrip("/"), prefix


def _names(fs, folder: str) -> list[str]:
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False))
    except FileNotFoundError:
        return []


def detect_format(source: str, storage_options: dict | None = None) -> str:
    """``datacomp`` or ``clip_retrieval`` from what the folder holds; an InputError naming it otherwise."""
    fs, root, _ = _filesystem(source, storage_options)
    if not fs.isdir(root):
        raise InputError(f"source {source}: no such folder, or an empty one (nothing to import)")
    names = set(_names(fs, root))
    if "metadata" in names:
        inside = _names(fs, f"{root}/metadata")
        if any(_NUMBERED["metadata"].match(n) for n in inside):
            return "clip_retrieval"
        if any(n.endswith(".npz") for n in inside):
            raise InputError(f"source {source}: its metadata/ folder holds DataComp's parquet and npz files; give "
                             f"--source {source.rstrip('/')}/metadata (or the scale's folder inside it)")
    if any(n.endswith(".npz") for n in names) or any(n.endswith(".parquet") for n in names):
        return "datacomp"
    if not names:
        raise InputError(f"source {source}: the folder is empty; expected DataComp's <name>.parquet and <name>.npz "
                         "files, or clip-retrieval's img_emb/, text_emb/ and metadata/ folders")
    raise InputError(f"source {source}: neither DataComp's <name>.parquet and .npz files nor clip-retrieval's "
                     f"img_emb/, text_emb/ and metadata/ folders (found {sorted(names)[:5]}); give format explicitly "
                     "if the layout is right")


def check_choice(format: str, embeddings: str) -> None:
    if format not in ("auto", *FORMATS):
        raise InputError(f"format: {format!r} is not one of 'auto', {', '.join(map(repr, FORMATS))}")
    if embeddings not in EMBEDDINGS:
        raise InputError(f"embeddings: {embeddings!r} is not one of {', '.join(map(repr, EMBEDDINGS))}")


def list_source(source: str, format: str = "auto", storage_options: dict | None = None) -> tuple[str, list[SourceShard]]:
    """The format and the source's shards, paired and sorted; an InputError for any unpaired file."""
    if format not in ("auto", *FORMATS):
        raise InputError(f"format: {format!r} is not one of 'auto', {', '.join(map(repr, FORMATS))}")
    if format == "auto":
        format = detect_format(source, storage_options)
    fs, root, prefix = _filesystem(source, storage_options)
    uri = lambda *parts: prefix + "/".join((root, *parts))  # noqa: E731
    shards: list[SourceShard] = []
    if format == "datacomp":
        found: dict[str, dict[str, str]] = {}
        for name in _names(fs, root):
            match = _DATACOMP.match(name)
            if match:
                found.setdefault(match.group(1), {})[match.group(2)] = uri(name)
        for number, (stem, files) in enumerate(sorted(found.items())):
            for have, lack in (("parquet", "npz"), ("npz", "parquet")):
                if have in files and lack not in files:
                    raise InputError(f"source {source}: {files[have]} has no {stem}.{lack} next to it; DataComp's "
                                     f"metadata comes as a parquet and an npz of the same name")
            shards.append(SourceShard(number=number, name=stem, table=files["parquet"], image=files["npz"]))
    else:
        found_cr: dict[str, dict[int, str]] = {}
        for sub, pattern in _NUMBERED.items():
            for name in _names(fs, f"{root}/{sub}"):
                match = pattern.match(name)
                if match:
                    found_cr.setdefault(sub, {})[int(match.group(1))] = uri(sub, name)
        numbers = sorted(set().union(*(set(v) for v in found_cr.values()))) if found_cr else []
        for number, n in enumerate(numbers):
            missing = [sub for sub in _NUMBERED if n not in found_cr.get(sub, {})]
            if missing:
                have = next(found_cr[sub][n] for sub in _NUMBERED if n in found_cr.get(sub, {}))
                names = {"img_emb": f"img_emb/img_emb_{n}.npy", "text_emb": f"text_emb/text_emb_{n}.npy",
                         "metadata": f"metadata/metadata_{n}.parquet"}
                raise InputError(f"source {source}: {have} has no {', '.join(names[m] for m in missing)}; "
                                 "clip-retrieval's output has an img_emb, a text_emb and a metadata file per partition")
            shards.append(SourceShard(number=number, name=str(n), table=found_cr["metadata"][n],
                                      image=found_cr["img_emb"][n], text=found_cr["text_emb"][n]))
    if not shards:
        raise InputError(f"source {source}: no {format} shard in it (the folder is empty or holds other files)")
    return format, shards


# ----- headers ------------------------------------------------------------------------------------
def _fingerprint(fs, path: str) -> dict:
    info = fs.info(path)
    stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return {"name": path.rsplit("/", 1)[-1], "size": int(info.get("size") or 0), "stamp": str(stamp)}


def _parquet_header(fs, path: str) -> tuple[int, list[str], bytes]:
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as handle:
            metadata = pq.read_metadata(handle)
            size = handle.size
            handle.seek(size - 8)
            length = int.from_bytes(handle.read(4), "little")
            handle.seek(size - 8 - length)
            footer = handle.read(length)
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable parquet file ({exc})") from None
    return metadata.num_rows, list(metadata.schema.to_arrow_schema().names), footer


def _npy_header(handle, where: str) -> dict:
    try:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    except ValueError as exc:
        raise InputError(f"{where}: not an npy array ({exc})") from None
    return {"shape": list(shape), "dtype": str(dtype)}


def _npz_header(fs, path: str) -> tuple[dict, bytes]:
    arrays, directory = {}, []
    try:
        with fs.open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                name = info.filename[:-4]
                directory.append(f"{info.filename}:{info.CRC}:{info.file_size}")
                with archive.open(info) as member:
                    arrays[name] = _npy_header(member, f"{path} array {name!r}")
    except zipfile.BadZipFile as exc:
        raise InputError(f"{path}: not an npz file ({exc})") from None
    return arrays, "\n".join(directory).encode()


def read_header(fs_source: tuple, format: str, shard: SourceShard) -> ShardHeader:
    """The shard's header (rows, columns, array shapes and dtypes) and its content hash."""
    fs = fs_source[0]
    strip = lambda uri: fs._strip_protocol(uri)  # noqa: E731
    digest = hashlib.sha256(format.encode())
    rows, columns, footer = _parquet_header(fs, strip(shard.table))
    digest.update(repr(_fingerprint(fs, strip(shard.table))).encode() + footer)
    if format == "datacomp":
        arrays, directory = _npz_header(fs, strip(shard.image))
        digest.update(repr(_fingerprint(fs, strip(shard.image))).encode() + directory)
    else:
        arrays = {}
        for name, uri in (("img", shard.image), ("txt", shard.text)):
            with fs.open(strip(uri), "rb") as handle:
                arrays[name] = _npy_header(handle, uri)
            digest.update(repr(_fingerprint(fs, strip(uri))).encode() + repr(arrays[name]).encode())
    return ShardHeader(rows=rows, columns=columns, arrays=arrays, content_hash=digest.hexdigest())


def read_headers(source: str, format: str, shards: list[SourceShard],
                 storage_options: dict | None = None) -> list[ShardHeader]:
    """Every shard's header, read by a few threads (each a couple of small reads)."""
    fs_source = _filesystem(source, storage_options)
    with ThreadPoolExecutor(max_workers=min(HEADER_THREADS, max(1, len(shards)))) as pool:
        return list(pool.map(lambda shard: read_header(fs_source, format, shard), shards))


def embedding_keys(format: str, embeddings: str) -> tuple[str, str]:
    """The names of the image and text matrices in a shard's header for the chosen embeddings."""
    return (f"{embeddings}_img", f"{embeddings}_txt") if format == "datacomp" else ("img", "txt")


def check_header(format: str, embeddings: str, shard: SourceShard, header: ShardHeader) -> int:
    """The cheap checks of one shard (columns, keys, alignment, 2-D float matrices); returns its width."""
    if format == "datacomp":
        missing = [c for c in DATACOMP_COLUMNS if c not in header.columns]
        if missing:
            raise InputError(f"{shard.table}: column(s) {missing} missing; DataComp's metadata has {list(DATACOMP_COLUMNS)}")
    else:
        if "caption" not in header.columns:
            raise InputError(f"{shard.table}: column 'caption' missing (clip-retrieval writes it with the text "
                             "embeddings)")
        if "url" not in header.columns and "image_path" not in header.columns and "uid" not in header.columns:
            raise InputError(f"{shard.table}: neither 'url' nor 'image_path' (nor 'uid'): no way to name its samples")
    dims = []
    for key, where in zip(embedding_keys(format, embeddings), (shard.image, shard.text or shard.image)):
        if key not in header.arrays:
            raise InputError(f"{where}: no embedding array {key!r} (it has {sorted(header.arrays)})")
        shape, dtype = header.arrays[key]["shape"], header.arrays[key]["dtype"]
        name = f"{where} array {key!r}" if format == "datacomp" else where
        if len(shape) != 2 or not np.issubdtype(np.dtype(dtype), np.floating):
            raise InputError(f"{name}: expected a 2-D float matrix, got shape {shape} of {dtype}")
        if shape[0] != header.rows:
            raise InputError(f"{name}: {shape[0]} rows, but {shard.table} has {header.rows}; the embeddings must be "
                             "row-aligned with the metadata")
        dims.append(shape[1])
    if dims[0] != dims[1]:
        raise InputError(f"{shard.image}: image embeddings of dimension {dims[0]} but text embeddings of {dims[1]}")
    return dims[0]


# ----- data ---------------------------------------------------------------------------------------
def mint_uids(paths: pd.Series, captions: pd.Series) -> np.ndarray:
    """``md5(path + "\\t" + caption)`` in hex for every row (a missing caption counts as empty)."""
    joined = (paths.fillna("").astype(str) + "\t" + captions.fillna("").astype(str)).tolist()
    return np.array([hashlib.md5(text.encode("utf-8")).hexdigest() for text in joined], dtype=object)


def _read_parquet(uri: str, columns: list[str] | None, storage_options: dict | None,
                  optional: tuple[str, ...] = ()) -> pd.DataFrame:
    """``columns`` (all when None) and whichever of ``optional`` the file has, in one open of the file."""
    import pyarrow.parquet as pq

    with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
        parquet = pq.ParquetFile(handle)
        names = set(parquet.schema_arrow.names)
        wanted = None if columns is None else [*columns, *(name for name in optional if name in names)]
        return parquet.read(columns=wanted).to_pandas()


def _path_column(columns) -> str | None:
    return "url" if "url" in columns else "image_path" if "image_path" in columns else None


def shard_uids(format: str, shard: SourceShard, storage_options: dict | None = None) -> np.ndarray:
    """The shard's uids as the import will store them: read, or minted for clip-retrieval without a uid."""
    if format == "datacomp":
        return _read_parquet(shard.table, ["uid"], storage_options)["uid"].to_numpy(dtype=object)
    frame = _read_parquet(shard.table, [], storage_options, optional=("uid", "url", "image_path", "caption"))
    if "uid" in frame:
        return frame["uid"].to_numpy(dtype=object)
    path = _path_column(frame.columns)
    return mint_uids(frame[path], frame["caption"])


def bad_uids(uids: np.ndarray) -> np.ndarray:
    """Positions of uids that are not 32 lower-case hex characters (a number or a missing uid is not one)."""
    text = pd.Series(uids, dtype=object)
    if pd.api.types.infer_dtype(text, skipna=False) != "string":  # numbers or missing values among them
        is_text = np.frompyfunc(lambda value: isinstance(value, str), 1, 1)(text.to_numpy()).astype(bool)
        text = text.where(is_text, "")
    ok = text.str.fullmatch(r"[0-9a-f]{32}").to_numpy(dtype=bool)
    return np.flatnonzero(~ok)


def read_shard_data(format: str, embeddings: str, shard: SourceShard,
                    storage_options: dict | None = None) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """One shard's metadata (in source order) and its image and text embeddings, as stored (no copy)."""
    image_key, text_key = embedding_keys(format, embeddings)
    if format == "datacomp":
        frame = _read_parquet(shard.table, list(DATACOMP_COLUMNS), storage_options, optional=(FACE_BOXES,))
        with fsspec.open(shard.image, "rb", **(storage_options or {})) as handle:
            with np.load(handle, allow_pickle=False) as arrays:
                image, text = arrays[image_key], arrays[text_key]
        return frame, image, text
    frame = _read_parquet(shard.table, None, storage_options)
    matrices = []
    for uri in (shard.image, shard.text):
        with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
            matrices.append(np.load(handle, allow_pickle=False))
    return frame, matrices[0], matrices[1]
