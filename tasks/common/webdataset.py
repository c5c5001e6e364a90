"""Read webdataset tar shards: the one reader every stage uses.

In:  the URI of a ``.tar`` (a local path or any fsspec URI, with its storage options) and,
     where it is recorded, the number of samples it must hold (img2dataset's ``status ==
     "success"`` count, kept per shard as ``n_success`` in a pool or subset manifest).
Out: :func:`iter_samples` yields ``(key, {extension: bytes})`` per sample in tar order, streaming:
     one sample in memory at a time. A sample is a run of consecutive regular files with the same
     key, the path up to the first dot of the file name (``dir/0001.jpg`` is key ``dir/0001``,
     extension ``jpg``). :func:`count_samples` counts them reading only the headers.
:func:`sizes_table` and :func:`stats_for_resharded`: what a folder of shards carries for the
tools that read it (open_clip's and DataComp's ``sizes.json``, img2dataset's ``_stats.json``).

Member names are checked by :func:`check_member_name`, the one check of every tar this project
reads or writes: an absolute path, a ``..`` component or a link pointing outside the archive is
refused (:class:`~tasks.common.errors.InputError` naming the shard and the member), because a
tool that extracts the shard would write outside its folder.

A damaged shard raises :class:`~tasks.common.errors.StageFailed` naming its URI: cut inside a
member, a header that is not a tar header, no end-of-archive marker (cut at a member boundary),
or a sample count other than the recorded one (naming both numbers). It is ``StageFailed``, not
``InputError``: the shard is in the store, not a parameter the user got wrong, and a failed
read of object storage is worth the task's retries; a shard corrupt at rest fails again, with
the same message, after them.

The headers are parsed here (ustar, pax and GNU long names) rather than by :mod:`tarfile`,
which parses every header fully and made reading selected samples 10x slower; unwanted file
data is skipped by seeking.
"""

from __future__ import annotations

import posixpath
from collections.abc import Container
from typing import Iterator

import fsspec

from tasks.common.errors import InputError, StageFailed

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
REGULAR = (b"0", b"\0", b"7")
LINKS = (b"1", b"2")  # hard link, symbolic link
SKIP_CHUNK = 1 << 20


def iter_samples(uri: str, expected: int | None = None, keys: Container[str] | None = None,
                 storage_options: dict | None = None) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {extension: bytes})`` of each sample of the shard at ``uri``, in tar order.

    With ``keys``, only the samples whose key is in it are read and yielded; the others are
    skipped (but counted). With ``expected``, the shard must hold exactly that many samples.
    """
    for key, files in _read(uri, expected, keys, storage_options):
        if files is not None:
            yield key, files


def count_samples(uri: str, expected: int | None = None, storage_options: dict | None = None) -> int:
    """The number of samples in the shard at ``uri`` (reading only headers); checked against ``expected``."""
    return sum(1 for _ in _read(uri, expected, (), storage_options))


def check_member_name(name: str, where: str, link_target: str | None = None, hard_link: bool = False) -> str:
    """``name`` when it is safe to extract: not empty, relative, no ``..`` component, no NUL, and for a
    link (``link_target``: its target) a target that stays inside the archive: a symbolic link's
    target is relative to the member's folder, a hard link's (``hard_link``) to the archive's root.
    Otherwise :class:`InputError` naming ``where`` (the shard) and the member."""
    if not name or name.startswith("/") or "\0" in name or ".." in name.split("/"):
        raise InputError(f"{where}: tar member {name!r} is an absolute path or leaves the archive's folder "
                         f"('..'): refused, an unsafe tar")
    if link_target is not None:
        base = "" if hard_link else posixpath.dirname(name)
        resolved = posixpath.normpath(posixpath.join(base, link_target))
        if link_target.startswith("/") or resolved == ".." or resolved.startswith("../") or "\0" in link_target:
            raise InputError(f"{where}: tar member {name!r} links to {link_target!r}, outside the archive: "
                             f"refused, an unsafe tar")
    return name


def _read(uri: str, expected: int | None, keys: Container[str] | None,
          storage_options: dict | None) -> Iterator[tuple[str, dict[str, bytes] | None]]:
    """Every sample as ``(key, files)``, ``files`` None for a sample not in ``keys``; then the checks."""
    with fsspec.open(uri, "rb", **(storage_options or {})) as handle:
        members = _Members(handle, uri)
        current, files, count = None, None, 0
        for name, size in members:
            folder, _, base = name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if key != current:
                if count:
                    yield current, files
                current, count = key, count + 1
                files = {} if keys is None or key in keys else None
            if files is None:
                members.skip(size)
            else:
                files[ext] = members.read(size)
        if count:
            yield current, files
        ended = members.ended
    if expected is not None and count != expected:
        raise StageFailed(f"shard {uri}: holds {count} samples but {expected} were recorded for it; "
                          f"the shard is truncated or is not the one that was recorded")
    if not ended:
        raise StageFailed(f"shard {uri}: ends after {count} samples without the end-of-archive marker: "
                          f"the file was cut at a member boundary")


class _Members:
    """Iterates ``(name, size)`` of a tar's regular files; the caller must :meth:`read` or
    :meth:`skip` each file's ``size`` bytes of data before asking for the next."""

    def __init__(self, handle, uri: str):
        self.handle, self.uri = handle, uri
        self.offset = 0  # of the next byte to read
        self.pending = 0  # padding after the last file's data, still to skip
        self.ended = False  # the end-of-archive marker was reached

    def __iter__(self) -> Iterator[tuple[str, int]]:
        long_name = long_link = None
        while True:
            self._skip_bytes(self.pending)
            self.pending = 0
            start = self.offset
            header = self._read_exactly(BLOCK, allow_eof=True)
            if header is None:
                return
            if header == ZERO_BLOCK:
                self.ended = True
                return
            size, kind = self._parse(header, start)
            padded = -(-size // BLOCK) * BLOCK
            if kind in (b"x", b"L", b"K"):  # pax extended header, GNU long name or link: the next member's
                payload = self._read_exactly(padded)[:size]
                long_name = _long_name(kind, payload) or long_name
                long_link = _long_link(kind, payload) or long_link
                continue
            name = (long_name or _header_name(header)).decode("utf-8", "replace")
            link = (long_link or header[157:257].split(b"\0", 1)[0]).decode("utf-8", "replace")
            long_name = long_link = None
            check_member_name(name, f"shard {self.uri}", link if kind in LINKS else None, hard_link=kind == b"1")
            if kind in REGULAR:
                self.pending = padded - size
                yield name, size
            else:
                self._skip_bytes(padded)

    def read(self, size: int) -> bytes:
        return self._read_exactly(size)

    def skip(self, size: int) -> None:
        self._skip_bytes(size)

    def _parse(self, header: bytes, start: int) -> tuple[int, bytes]:
        stored = header[148:156]
        try:
            checksum = int(stored.strip(b"\0 ") or b"-1", 8)
            size_field = header[124:136]
            size = (int.from_bytes(size_field[1:], "big") if size_field[0] & 0x80
                    else int(size_field.strip(b"\0 ") or b"0", 8))
        except ValueError:
            checksum, size = -1, 0
        rest = header[:148] + header[156:]
        unsigned = sum(rest) + 8 * 32  # the checksum field counts as spaces
        # some old writers summed signed bytes: each byte above 127 then counts 256 less
        if checksum != unsigned and checksum != unsigned - 256 * sum(1 for b in rest if b > 127):
            raise StageFailed(f"shard {self.uri}: the block at byte {start} is not a tar header "
                              f"(a damaged or truncated shard)")
        return size, header[156:157]

    def _read_exactly(self, size: int, allow_eof: bool = False) -> bytes | None:
        data = self.handle.read(size) if size else b""
        self.offset += len(data)
        if len(data) == size:
            return data
        if allow_eof and not data:
            return None
        raise StageFailed(f"shard {self.uri}: truncated inside a member (the file ends at byte {self.offset}, "
                          f"{size - len(data)} bytes short)")

    def _skip_bytes(self, size: int) -> None:
        if size <= 0:
            return
        if self.handle.seekable():
            end = self.offset + size
            if self._before_end(end):
                self.offset = end
                return
            raise StageFailed(f"shard {self.uri}: truncated inside a member (data up to byte {end} is missing)")
        while size:
            self._read_exactly(min(size, SKIP_CHUNK))
            size -= min(size, SKIP_CHUNK)

    def _before_end(self, position: int) -> bool:
        """Seek to ``position``; whether the file has that many bytes (a seek past the end does not fail)."""
        self.handle.seek(position - 1)
        present = len(self.handle.read(1)) == 1
        self.handle.seek(position)
        return present


def _header_name(header: bytes) -> bytes:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field (GNU uses these bytes otherwise)
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            return prefix + b"/" + name
    return name


def _long_name(kind: bytes, payload: bytes) -> bytes | None:
    if kind == b"L":
        return payload.rstrip(b"\0")
    return _pax_field(payload, b"path=") if kind == b"x" else None


def _long_link(kind: bytes, payload: bytes) -> bytes | None:
    if kind == b"K":
        return payload.rstrip(b"\0")
    return _pax_field(payload, b"linkpath=") if kind == b"x" else None


def _pax_field(payload: bytes, prefix: bytes) -> bytes | None:
    for record in payload.split(b"\n"):
        _, _, field = record.partition(b" ")
        if field.startswith(prefix):
            return field[len(prefix):]
    return None


# ----- what a shard folder carries for other tools -----------------------------------------------
def stats_for_resharded(samples: int) -> dict:
    """``_stats.json`` of a shard written from chosen samples: every one of them is a success."""
    return {"count": int(samples), "successes": int(samples), "failed_to_download": 0, "failed_to_resize": 0,
            "status_dict": {"success": int(samples)} if samples else {}}


def sizes_table(names: list[str], counts: list[int]) -> dict[str, int]:
    """``sizes.json``: each shard's file name (basename) -> its sample count."""
    if len(names) != len(counts) or any("/" in name for name in names):
        raise ValueError("sizes.json: one basename per count")
    return {name: int(count) for name, count in zip(names, counts)}
