"""The store: one root URI under which every stage reads and writes.

In:  a root URI, a local directory (``/data/curation`` or ``file:///data/curation``) or
     ``s3://bucket/prefix`` (through s3fs), and ``storage_options``: fsspec options without
     secrets (e.g. ``{"endpoint_url": "http://minio:9000"}``).
Out: a :class:`Store` whose writes are atomic: a file becomes visible only when complete.
     Locally that is a temporary name in the same folder and ``os.replace``; on object
     storage it is one PUT per object (multipart uploads also appear only when complete).
     Published local files get the mode ``0o666 & ~umask`` (folders the default), so other
     accounts sharing the store can read them.

Credentials never travel as options, because options end up in flow-run parameters, manifests
and logs. They come from the environment (the usual ``AWS_*`` variables, ``AWS_ENDPOINT_URL``
included) or from a Prefect Secret block: ``storage_options["credentials_block"] = "<name>"``,
whose value is a JSON object of fsspec credential options (``{"key": ..., "secret": ...}``).
The block is read once, when the Store is built (in the flow's process); the resolved
credentials live only in the Store's private ``_credentials``, travel with it when it is
pickled (a Dask worker needs no Prefect API), and never appear in ``storage_options``.

Paths given to the methods are relative to the root and use ``/``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from tasks.common.errors import InputError, StoreError

CREDENTIALS_BLOCK = "credentials_block"  # storage option: name of a Prefect Secret block
SECRET_OPTIONS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                            "aws_session_token"})


class Store:
    """A root URI plus atomic reads and writes under it."""

    # No __dict__: encoders that walk an object's attributes (FastAPI's, which Prefect uses for flow
    # parameters) cannot dump the credentials; Prefect records a Store parameter as "<Store>".
    __slots__ = ("storage_options", "_credentials", "fs", "is_local", "root_path", "root")

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        options = dict(storage_options or {})
        _refuse_secrets(options)
        self._connect(root, options, _credentials_from_block(options.get(CREDENTIALS_BLOCK)))

    def _connect(self, root: str, storage_options: dict[str, Any], credentials: dict[str, Any]) -> None:
        if not root or not isinstance(root, str):
            raise StoreError(f"store: expected a directory path or s3:// URI, got {root!r}")
        self.storage_options = storage_options  # no secrets: safe to persist, log and save
        self._credentials = credentials  # resolved from the Secret block; never persisted
        self.fs, path = fsspec.core.url_to_fs(root, **self.fsspec_options())
        self.is_local = "file" in _protocols(self.fs)
        self.root_path = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.root = self.root_path if self.is_local else f"{_protocols(self.fs)[0]}://{self.root_path}"

    def __repr__(self) -> str:
        return f"Store({self.root!r})"

    def __reduce__(self):
        # the resolved credentials travel in memory, so the unpickled Store needs no Prefect API
        return (_unpickle_store, (self.root, self.storage_options, self._credentials))

    def fsspec_options(self) -> dict[str, Any]:
        """The options fsspec gets, credentials included: pass them only to fsspec, never persist them."""
        options = {k: v for k, v in self.storage_options.items() if k != CREDENTIALS_BLOCK}
        return {**options, **self._credentials}

    def options_for(self, uri: str) -> dict[str, Any]:
        """fsspec options to read ``uri`` with: the store's (credentials included) when ``uri`` is on the
        store's kind of filesystem (an evaluation set or task list in the same S3 service), else none."""
        if "://" not in uri or uri.startswith("file://") or self.is_local:
            return {}
        return self.fsspec_options() if uri.split("://", 1)[0] in _protocols(self.fs) else {}

    # ----- paths -------------------------------------------------------------
    def path(self, rel: str = "") -> str:
        """Filesystem path (no protocol) of ``rel`` under the root."""
        rel = rel.strip("/")
        if self.is_local:
            return os.path.join(self.root_path, *rel.split("/")) if rel else self.root_path
        return posixpath.join(self.root_path, rel) if rel else self.root_path

    def uri(self, rel: str = "") -> str:
        """Full URI of ``rel`` (a plain path for a local store)."""
        if self.is_local:
            return self.path(rel)
        return f"{_protocols(self.fs)[0]}://{self.path(rel)}"

    def relative(self, uri: str) -> str:
        """``uri`` as a path relative to the root (the inverse of :meth:`uri`)."""
        base = self.uri().rstrip("/") + "/"
        if not uri.startswith(base):
            raise StoreError(f"{uri}: not under the store {self.uri()}")
        return uri[len(base):]

    def local_path(self, rel: str = "") -> Path | None:
        """The local path of ``rel`` when the store is local, else ``None``."""
        return Path(self.path(rel)) if self.is_local else None

    def staging_path(self, rel: str) -> Path:
        """A local folder for work in progress on ``rel``, stable across runs on this machine.

        Inside a local store (``_staging/<rel>``, so finished files are published by a rename);
        for an object store, under ``$CURATION_STAGING_DIR`` (default: the system temp folder).
        """
        local = self.local_path(f"_staging/{rel}")
        if local is not None:
            return local
        base = Path(os.environ.get("CURATION_STAGING_DIR", Path(tempfile.gettempdir()) / "clip-curation-staging"))
        return base / hashlib.sha256(self.root.encode()).hexdigest()[:16] / rel

    # ----- checks -------------------------------------------------------------
    def check_writable(self) -> None:
        """Write and delete a probe object; raise :class:`StoreError` naming the root if that fails."""
        probe = f"_probe/{uuid.uuid4().hex}"
        try:
            self.write_bytes(probe, b"ok")
            self.fs.rm(self.path(probe))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot write here"
            raise StoreError(f"store {self.root!r} cannot be written: {type(exc).__name__}: {exc}") from exc

    # ----- reads ---------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str) -> Any:
        return json.loads(self.read_bytes(rel))

    def read_npy(self, rel: str):
        """A ``.npy`` array (no pickled objects)."""
        import numpy as np

        return np.load(io.BytesIO(self.read_bytes(rel)), allow_pickle=False)

    def open(self, rel: str, mode: str = "rb"):
        """Open for reading. Use the atomic ``write_*``/``put_file`` methods to write."""
        if "r" not in mode:
            raise ValueError("Store.open is for reading; write with write_bytes or put_file")
        return self.fs.open(self.path(rel), mode)

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        """Relative paths of the entries of folder ``rel`` matching ``pattern``, sorted."""
        base = self.path(rel)
        found = self.fs.glob(posixpath.join(base, pattern) if not self.is_local else os.path.join(base, pattern))
        prefix_len = len(self.path()) + 1
        return sorted(_strip_protocol(p)[prefix_len:].replace(os.sep, "/") for p in found)

    # ----- atomic writes ---------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> str:
        """Write ``data`` to ``rel`` atomically; return the URI."""
        target = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            fd, tmp = _temporary_file(target)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            except BaseException:
                _remove_quietly(tmp)
                raise
        else:
            self.fs.pipe_file(target, data)
        return self.uri(rel)

    def write_npy(self, rel: str, array) -> str:
        """Write a numpy array as ``.npy`` atomically; return the URI."""
        import numpy as np

        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return self.write_bytes(rel, buffer.getvalue())

    def write_arrow(self, rel: str, table) -> str:
        """Write a pyarrow table as parquet atomically; return the URI."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        return self.write_bytes(rel, sink.getvalue().to_pybytes())

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_bytes(rel, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())

    def put_file(self, local_file: str | os.PathLike, rel: str, move: bool = False) -> str:
        """Copy (or, locally, move) a finished local file to ``rel`` atomically; return the URI."""
        local_file = os.fspath(local_file)
        target = self.path(rel)
        if self.is_local:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if move:
                os.chmod(local_file, _published_mode())
                os.replace(local_file, target)
                return self.uri(rel)
            fd, tmp = _temporary_file(target)
            try:
                with os.fdopen(fd, "wb") as dst, open(local_file, "rb") as src:
                    while chunk := src.read(1 << 22):
                        dst.write(chunk)
                os.replace(tmp, target)
            except BaseException:
                _remove_quietly(tmp)
                raise
        else:
            self.fs.put_file(local_file, target)
            if move:
                os.remove(local_file)
        return self.uri(rel)

    def remove(self, rel: str, recursive: bool = False) -> None:
        if self.exists(rel):
            self.fs.rm(self.path(rel), recursive=recursive)

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Relative paths of every file under ``rel``."""
        prefix_len = len(self.path()) + 1
        for path in self.fs.find(self.path(rel)):
            yield _strip_protocol(path)[prefix_len:].replace(os.sep, "/")


def _refuse_secrets(storage_options: dict[str, Any]) -> None:
    """Raise InputError naming the first secret (a key, secret, token, password) in the options."""
    nested = storage_options.get("client_kwargs") or {}
    found = [k for k in storage_options if str(k).lower() in SECRET_OPTIONS]
    found += [f"client_kwargs.{k}" for k in nested if str(k).lower() in SECRET_OPTIONS]
    if found:
        raise InputError(
            f"storage_options {found[0]!r}: credentials must not be given as options (they would be saved in "
            "flow-run parameters, manifests and blocks). Set them in the environment (AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), or save them as a JSON object in a Prefect Secret block "
            "(Secret(value={\"key\": ..., \"secret\": ...}).save(\"s3-creds\")) and pass "
            "storage_options={\"credentials_block\": \"s3-creds\"}")


def _credentials_from_block(name: str | None) -> dict[str, Any]:
    """The fsspec credential options saved in Prefect Secret block ``name`` (none: ``{}``)."""
    if name is None:
        return {}
    from prefect.blocks.system import Secret

    where = f"storage_options {CREDENTIALS_BLOCK!r} {name!r}"
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: expected the name of a Prefect Secret block")
    try:
        value = Secret.load(name, _sync=True).get()
    except ValueError as exc:  # Prefect: "Unable to find block document named ..."
        raise InputError(f"{where}: no Prefect Secret block of that name ({exc})") from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    if not isinstance(value, dict) or not value:
        raise InputError(f"{where}: the Secret's value must be a JSON object of fsspec credential options, "
                         'e.g. {"key": ..., "secret": ...}')
    return dict(value)


def _unpickle_store(root: str, storage_options: dict[str, Any], credentials: dict[str, Any]) -> Store:
    store = Store.__new__(Store)
    store._connect(root, storage_options, credentials)
    return store


def _temporary_file(target: str) -> tuple[int, str]:
    """An open new file next to ``target`` (``.tmp-<random>``) with the published mode; (fd, path)."""
    tmp = os.path.join(os.path.dirname(target), f".tmp-{uuid.uuid4().hex}")
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp  # the kernel applies the umask


def _published_mode() -> int:
    """``0o666 & ~umask``: the mode a newly created file gets."""
    try:  # Linux >= 4.7 shows the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as status:
            umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    except (OSError, StopIteration):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def _protocols(fs) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _strip_protocol(path: str) -> str:
    return path.split("://", 1)[1] if "://" in path else path


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
