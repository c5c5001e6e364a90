"""The webdataset tar reader on real tar files: good shards of every tar format, cut shards."""

import io
import tarfile

import fsspec
import pytest

from tasks.common.errors import StageFailed
from tasks.common.webdataset import count_samples, iter_samples


def _write(path, files: dict[str, bytes], tar_format=tarfile.USTAR_FORMAT, pax: bool = False) -> None:
    with tarfile.open(path, "w", format=tar_format) as tar:
        folder = tarfile.TarInfo("dir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if pax:
                info.pax_headers = {"comment": "x"}
            tar.addfile(info, io.BytesIO(data))


def _samples_by_tarfile(path) -> list[tuple[str, dict[str, bytes]]]:
    """The samples as the readers grouped them before (Python's tarfile, consecutive keys)."""
    samples = []
    with tarfile.open(path) as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, base = member.name.rpartition("/")
            stem, _, ext = base.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if not samples or samples[-1][0] != key:
                samples.append((key, {}))
            samples[-1][1][ext] = tar.extractfile(member).read()
    return samples


def _shard(path, n: int = 20) -> None:
    files = {}
    for i in range(n):
        files[f"{i:09d}.jpg"] = bytes([i % 256]) * (300 + 97 * i)  # sizes off the 512-byte blocks
        files[f"{i:09d}.txt"] = f"caption {i}".encode()
        files[f"{i:09d}.json"] = b'{"uid": "%d"}' % i
    _write(path, files)


def _member_ends(path) -> list[int]:
    """Byte offset just after each member's data and padding: the member boundaries."""
    with tarfile.open(path) as tar:
        return [m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers() if m.isfile()]


@pytest.mark.parametrize("tar_format", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_a_good_shard_gives_the_samples_tarfile_gives(tmp_path, tar_format):
    long_folder = "d" * (120 if tar_format != tarfile.USTAR_FORMAT else 90)
    files = {"k1.jpg": b"x" * 513, "k1.txt": "caption é".encode(), "k2.jpg": b"", "k3.json": b"{}" * 300,
             "k3.seg.png": b"png", "dir/k4.txt": b"in a folder", f"{long_folder}/k5.txt": b"long path"}
    path = tmp_path / "0.tar"
    _write(path, files, tar_format, pax=tar_format == tarfile.PAX_FORMAT)
    expected = _samples_by_tarfile(path)
    assert [key for key, _ in expected] == ["k1", "k2", "k3", "dir/k4", f"{long_folder}/k5"]
    assert expected[2][1] == {"json": b"{}" * 300, "seg.png": b"png"}
    assert list(iter_samples(str(path), expected=5)) == expected
    assert list(iter_samples(f"file://{path}")) == expected
    assert list(iter_samples(str(path), keys={"k3", f"{long_folder}/k5"})) == [expected[2], expected[4]]
    assert count_samples(str(path), expected=5) == 5


def test_an_fsspec_uri(tmp_path):
    _shard(tmp_path / "0.tar")
    with fsspec.open("memory://bucket/0.tar", "wb") as handle:
        handle.write((tmp_path / "0.tar").read_bytes())
    assert list(iter_samples("memory://bucket/0.tar", expected=20)) == _samples_by_tarfile(tmp_path / "0.tar")
    assert count_samples("memory://bucket/0.tar", expected=20) == 20


def test_a_shard_cut_inside_a_member_names_the_shard(tmp_path):
    good = tmp_path / "good.tar"
    _shard(good)
    ends = _member_ends(good)
    data = good.read_bytes()
    for cut, where in ((ends[30] - 700, "data"), (ends[30] + 100, "header")):
        path = tmp_path / f"cut-in-{where}.tar"
        path.write_bytes(data[:cut])
        if where == "data":
            with pytest.raises(tarfile.ReadError, match="^unexpected end of data$"):
                _samples_by_tarfile(path)  # what the stages saw before: no shard named
        else:
            assert len(_samples_by_tarfile(path)) == 11  # tarfile takes a cut header for the end
        for read in (lambda: list(iter_samples(str(path))), lambda: count_samples(str(path)),
                     lambda: list(iter_samples(str(path), keys={"000000001"}))):
            with pytest.raises(StageFailed, match=f"shard {path}: (truncated inside a member|the block at)"):
                read()


def test_a_shard_cut_at_a_member_boundary_names_the_shard_and_both_counts(tmp_path):
    good = tmp_path / "good.tar"
    _shard(good)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.read_bytes()[:_member_ends(good)[3 * 13 - 1]])  # after the 13th sample
    assert len(_samples_by_tarfile(cut)) == 13  # tarfile reads it without a word
    for read in (lambda: list(iter_samples(str(cut), expected=20)), lambda: count_samples(str(cut), expected=20)):
        with pytest.raises(StageFailed, match=f"shard {cut}: holds 13 samples but 20 were recorded"):
            read()
    # with no recorded count, the missing end-of-archive marker still gives it away
    with pytest.raises(StageFailed, match=f"shard {cut}: ends after 13 samples without the end-of-archive"):
        list(iter_samples(str(cut)))


def test_a_file_that_is_not_a_tar(tmp_path):
    path = tmp_path / "0.tar"
    path.write_bytes(b"<html>not found</html>" * 40)
    with pytest.raises(StageFailed, match=f"shard {path}: the block at byte 0 is not a tar header"):
        count_samples(str(path))
