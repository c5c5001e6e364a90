"""The store: one root URI under which every stage reads and writes.

In:  a root URI, a local directory (``/data/curation`` or ``file:///data/curation``) or
     ``s3://bucket/prefix`` (through s3fs), and ``storage_options``: fsspec options without
     secrets (e.g. ``{"endpoint_url": "http://minio:9000"}``).
Out: a :class:`Store` whose writes are atomic: a file becomes visible only when complete.
     Locally that is a temporary name in the same folder and ``os.replace``; on object
     storage it is one PUT per object (multipart uploads also appear only when complete).
     Published local files get the mode ``0o666 & ~umask`` (folders the default), so other
     accounts sharing the store can read them.

Transient object-store errors (HTTP 5xx such as 500 ``InternalError`` and 503 ``SlowDown``, a
connection reset or timeout) are retried here, in one place, by every Store method that calls the
object store: :data:`TRANSIENT_ATTEMPTS` attempts in all, with exponential backoff from
:data:`TRANSIENT_BACKOFF_S` (jittered, capped), on top of the attempts botocore and s3fs make
themselves. Anything else (a missing key, a refused credential, bad input) is raised at once.
Local stores are not retried. Readers that open files through fsspec themselves (a URI and
``fsspec_options()``) get only botocore's and s3fs's retries.

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

import errno
import hashlib
import io
import json
import logging
import os
import posixpath
import random
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec

from tasks.common.errors import InputError, StoreError
from tasks.common.secrets import CREDENTIALS_BLOCK, refuse_secret_options  # noqa: F401 - CREDENTIALS_BLOCK re-exported

TRANSIENT_ATTEMPTS = 6  # attempts of one object-store call on transient errors (the first included)
TRANSIENT_BACKOFF_S = (0.5, 8.0)  # first delay and cap, doubled per attempt (+-25 % jitter): ~16 s in all
_TRANSIENT_ERRNOS = frozenset({errno.EREMOTEIO, errno.EBUSY, errno.ECONNRESET, errno.ETIMEDOUT, errno.EPIPE})
_TRANSIENT_CODES = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout", "Throttling",
                              "ThrottlingException", "500", "502", "503", "504"})
_TRANSIENT_TYPES = frozenset({"ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError",
                              "ConnectTimeoutError", "ServerDisconnectedError", "ClientOSError", "ClientPayloadError",
                              "IncompleteRead", "ResponseStreamingError", "ProtocolError"})  # botocore's, aiohttp's
_log = logging.getLogger(__name__)


class Store:
    """A root URI plus atomic reads and writes under it."""

    # No __dict__: encoders that walk an object's attributes (FastAPI's, which Prefect uses for flow
    # parameters) cannot dump the credentials; Prefect records a Store parameter as "<Store>".
    __slots__ = ("storage_options", "_credentials", "fs", "is_local", "root_path", "root")

    def __init__(self, root: str, storage_options: dict[str, Any] | None = None):
        options = dict(storage_options or {})
        refuse_secret_options(options)
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

    def _call(self, operation, *args, **kwargs):
        """``operation(*args, **kwargs)`` on the filesystem; on an object store, retried with backoff
        while it fails with a transient error (:func:`is_transient_error`), :data:`TRANSIENT_ATTEMPTS` in all."""
        if self.is_local:
            return operation(*args, **kwargs)
        first, cap = TRANSIENT_BACKOFF_S
        for attempt in range(1, TRANSIENT_ATTEMPTS + 1):
            try:
                return operation(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below; anything not transient is raised as is
                if attempt == TRANSIENT_ATTEMPTS or not is_transient_error(exc):
                    raise
                delay = min(cap, first * 2 ** (attempt - 1)) * random.uniform(0.75, 1.25)
                _log.warning("store %s: %s %s failed (%s: %s); attempt %d of %d in %.1f s", self.root,
                             getattr(operation, "__name__", "call"), args[:1], type(exc).__name__, exc,
                             attempt + 1, TRANSIENT_ATTEMPTS, delay)
                time.sleep(delay)

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
            self._call(self.fs.rm, self.path(probe))
        except Exception as exc:  # noqa: BLE001 - any failure means "cannot write here"
            raise StoreError(f"store {self.root!r} cannot be written: {type(exc).__name__}: {exc}") from exc

    # ----- reads ---------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return self._call(self.fs.exists, self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self._call(self.fs.cat_file, self.path(rel))

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
        if self.is_local:
            return self.fs.open(self.path(rel), mode)
        handle = _RetryingReader(self, self._call(self.fs.open, self.path(rel), "rb"))
        return io.TextIOWrapper(io.BufferedReader(handle)) if "b" not in mode else handle

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        """Relative paths of the entries of folder ``rel`` matching ``pattern``, sorted."""
        base = self.path(rel)
        found = self._call(self.fs.glob, posixpath.join(base, pattern) if not self.is_local else os.path.join(base, pattern))
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
            self._call(self.fs.pipe_file, target, data)
        return self.uri(rel)

    def create_exclusive(self, rel: str, data: bytes) -> bool:
        """Write ``data`` to ``rel`` only if nothing is there, atomically; False when something was.

        Locally a complete temporary file hard-linked to the name (the link fails if the name exists);
        on S3 one conditional PUT (``If-None-Match: *``). For leases and locks, not for data.
        """
        target = self.path(rel)
        if not self.is_local:
            try:
                self._call(self.fs.pipe_file, target, data, mode="create")
            except FileExistsError:
                return False
            except OSError as exc:  # s3fs names a 412 FileExistsError only when the answer says which condition
                if _precondition_failed(exc):
                    return False
                raise
            return True
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd, tmp = _temporary_file(target)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.link(tmp, target)
            return True
        except FileExistsError:
            return False
        finally:
            _remove_quietly(tmp)

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
            self._call(self.fs.put_file, local_file, target)
            if move:
                os.remove(local_file)
        return self.uri(rel)

    def remove(self, rel: str, recursive: bool = False) -> None:
        if self.exists(rel):
            self._call(self.fs.rm, self.path(rel), recursive=recursive)

    def walk_files(self, rel: str = "") -> Iterator[str]:
        """Relative paths of every file under ``rel``."""
        prefix_len = len(self.path()) + 1
        for path in self._call(self.fs.find, self.path(rel)):
            yield _strip_protocol(path)[prefix_len:].replace(os.sep, "/")


class _RetryingReader(io.RawIOBase):
    """A read-only object-store file whose reads are retried by :meth:`Store._call` (seek back, read again)."""

    def __init__(self, store: Store, handle):
        self._store, self._handle = store, handle

    def _read_at(self, position: int, size: int) -> bytes:
        self._handle.seek(position)
        return self._handle.read(size)

    def readinto(self, buffer) -> int:
        data = self._store._call(self._read_at, self._handle.tell(), len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        return self._store._call(self._read_at, self._handle.tell(), size)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    @property
    def size(self) -> int:
        return self._handle.size

    def close(self) -> None:
        self._handle.close()
        super().close()


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is an object-store error worth retrying: an HTTP
    5xx or throttling answer (botocore's ClientError, or the OSError s3fs makes of it: EREMOTEIO for
    500 InternalError, EBUSY for 503 SlowDown), or a reset, closed or timed-out connection."""
    if isinstance(exc, (FileNotFoundError, FileExistsError, PermissionError)):
        return False  # an answer, not a fault: even when raised while handling a fault
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (ConnectionError, TimeoutError)) or type(exc).__name__ in _TRANSIENT_TYPES:
            return True
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            return True
        response = getattr(exc, "response", None)  # botocore's ClientError
        if isinstance(response, dict):
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
            if status >= 500 or str((response.get("Error") or {}).get("Code", "")) in _TRANSIENT_CODES:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _precondition_failed(exc: BaseException | None) -> bool:
    """Whether ``exc`` or an exception it came from is an HTTP 412 (a conditional write refused)."""
    while exc is not None:
        response = getattr(exc, "response", None)
        if isinstance(response, dict) and ((response.get("ResponseMetadata") or {}).get("HTTPStatusCode") == 412
                                           or (response.get("Error") or {}).get("Code") == "PreconditionFailed"):
            return True
        if "PreconditionFailed" in str(exc) or "412" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
