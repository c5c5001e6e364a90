"""Tar members that would land outside their folder when extracted are refused, reading and writing.

Crafted tars (absolute paths, ``..``, long pax/GNU names hiding them, links pointing outside) are
refused by the one reader every stage uses, naming the shard and the member; the resharding writer
refuses such a name before it is written; safe names (``./``, folders, links inside) still read.
"""

import io
import tarfile

import pytest

from tasks.common.errors import InputError
from tasks.common.webdataset import check_member_name, count_samples, iter_samples


def _tar(path, members: list[tarfile.TarInfo], tar_format=tarfile.USTAR_FORMAT) -> str:
    with tarfile.open(path, "w", format=tar_format) as tar:
        for info in members:
            data = b"x" * 3 if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, kind=tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize("bad, tar_format", [
    ("/etc/cron.d/evil.jpg", tarfile.USTAR_FORMAT),
    ("../evil.jpg", tarfile.USTAR_FORMAT),
    ("dir/../../evil.jpg", tarfile.USTAR_FORMAT),
    ("../" + "d" * 120 + "/evil.jpg", tarfile.PAX_FORMAT),  # only in the pax header's path
    ("../" + "d" * 120 + "/evil.jpg", tarfile.GNU_FORMAT),  # only in the GNU long name
])
def test_members_outside_the_folder_are_refused(tmp_path, bad, tar_format):
    uri = _tar(tmp_path / "00000.tar", [_file("0001.jpg"), _file("0001.txt"), _file(bad)], tar_format)
    with pytest.raises(InputError, match=rf"shard {uri}: tar member '{bad[:20]}.*refused, an unsafe tar"):
        list(iter_samples(uri))
    with pytest.raises(InputError, match="unsafe tar"):
        count_samples(uri)


@pytest.mark.parametrize("link", [
    _link("0002.jpg", "/etc/passwd"),
    _link("0002.jpg", "../../etc/passwd"),
    _link("dir/0002.jpg", "../../outside.jpg"),
    _link("0002.jpg", "../outside", tarfile.LNKTYPE),
    _link("0002.jpg", "../" + "t" * 120, tarfile.SYMTYPE),  # a long target: GNU 'K' / pax linkpath
])
@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_links_pointing_outside_are_refused(tmp_path, link, tar_format):
    uri = _tar(tmp_path / "00000.tar", [_file("0001.jpg"), link], tar_format)
    with pytest.raises(InputError, match=rf"tar member '{link.name}' links to .*outside the archive"):
        list(iter_samples(uri))


def test_safe_names_and_inside_links_still_read(tmp_path):
    folder = tarfile.TarInfo("./dir")
    folder.type = tarfile.DIRTYPE
    uri = _tar(tmp_path / "00000.tar", [folder, _file("./dir/0001.jpg"), _file("./dir/0001.txt"),
                                        _link("./dir/0002.jpg", "0001.jpg"), _file("0003..jpg"),
                                        _link("a/b/0004.jpg", "../c/x.jpg")])
    keys = [key for key, _ in iter_samples(uri)]
    assert keys == ["./dir/0001", "0003"]


@pytest.mark.parametrize("name", ["/abs.jpg", "../up.jpg", "a/../../up.jpg", "", "nul\0.jpg"])
def test_the_checker_refuses_what_a_writer_must_not_write(name):
    with pytest.raises(InputError, match="reshard of s3://b/x.tar: tar member"):
        check_member_name(name, "reshard of s3://b/x.tar")
    assert check_member_name("0123abcd.jpg", "w") == "0123abcd.jpg"


def test_resharding_refuses_a_member_name_that_leaves_the_folder(tmp_path):
    """The resharding writer names members ``<uid>.<ext>``: a uid that is a path is refused before writing."""
    from tasks.sample import subset_files

    source = _tar(tmp_path / "src.tar", [_file("0001.jpg"), _file("0001.txt")])
    with tarfile.open(tmp_path / "out.tar", "w") as out:
        with pytest.raises(InputError, match=r"reshard of .*src.tar: tar member '../../evil.jpg'"):
            subset_files._copy_members(_NoOptions(), source, {"0001": "../../evil"}, None, out, set())
        assert out.getmembers() == []


class _NoOptions:
    """What _copy_members asks of a store when the source tar is a local path."""

    def fsspec_options(self) -> dict:
        return {}
