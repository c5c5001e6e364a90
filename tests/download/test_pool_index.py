"""Reading and validating the pool index, and cutting it into slices."""

import pandas as pd
import pytest

from tasks.common.errors import InputError
from tasks.download.pool_index import passthrough_columns, plan_slices, read_pool_index


def _index(n=10, start=0):
    return pd.DataFrame({"uid": [f"{i:032x}" for i in range(start, start + n)],
                         "url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(start, start + n)],
                         "text": [f"caption {i}" for i in range(start, start + n)],
                         "original_width": 64, "sha256": "x"})


def test_reads_a_file_and_a_folder_in_name_order(tmp_path):
    _index(5).to_parquet(tmp_path / "one.parquet")
    folder = tmp_path / "parts"
    folder.mkdir()
    _index(3, start=10).to_parquet(folder / "b.parquet")
    _index(4, start=20).to_parquet(folder / "a.parquet")
    assert len(read_pool_index(str(tmp_path / "one.parquet"))) == 5
    index = read_pool_index(str(folder))
    assert index["uid"].tolist() == [f"{i:032x}" for i in [20, 21, 22, 23, 10, 11, 12]]


def test_reads_from_s3(s3_bucket):
    _index(4).to_parquet(f"{s3_bucket}/idx/part.parquet")
    assert len(read_pool_index(f"{s3_bucket}/idx")) == 4


def test_missing_column_names_file_and_column(tmp_path):
    path = tmp_path / "bad.parquet"
    _index().rename(columns={"url": "URL"}).to_parquet(path)
    with pytest.raises(InputError, match=r"bad\.parquet.*missing column 'url' \(found 'URL'"):
        read_pool_index(str(path))


def test_unreadable_parquet_names_the_file(tmp_path):
    path = tmp_path / "garbage.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(InputError, match="garbage.parquet.*not a readable parquet"):
        read_pool_index(str(path))


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_pool_index(str(tmp_path / "nope.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .parquet files"):
        read_pool_index(str(tmp_path / "empty"))


def test_empty_pool(tmp_path):
    path = tmp_path / "empty.parquet"
    _index(0).to_parquet(path)
    with pytest.raises(InputError, match="empty"):
        read_pool_index(str(path))


@pytest.mark.parametrize("url", ["ftp://host/a.jpg", "file:///etc/passwd", "not a url", None, "http://"])
def test_non_http_urls_are_refused(tmp_path, url):
    index = _index()
    index.loc[3, "url"] = url
    index.to_parquet(tmp_path / "i.parquet")
    with pytest.raises(InputError, match=r"column 'url' must hold http\(s\) URLs; 1 rows do not, e.g. uid "
                                         + index.loc[3, "uid"]):
        read_pool_index(str(tmp_path / "i.parquet"))


def test_bad_and_repeated_uids(tmp_path):
    index = _index()
    index.loc[2, "uid"] = "XYZ"
    index.to_parquet(tmp_path / "i.parquet")
    with pytest.raises(InputError, match="column 'uid' must hold 32"):
        read_pool_index(str(tmp_path / "i.parquet"))
    index = _index()
    index.loc[2, "uid"] = index.loc[1, "uid"]
    index.to_parquet(tmp_path / "j.parquet")
    with pytest.raises(InputError, match="repeated uids"):
        read_pool_index(str(tmp_path / "j.parquet"))


def test_slices_cover_the_index_and_hash_only_their_rows():
    index = _index(25)
    plans = plan_slices(index, "p", 10)
    assert [(p.start, p.stop) for p in plans] == [(0, 10), (10, 20), (20, 25)]
    changed = index.copy()
    changed.loc[22, "text"] = "another caption"
    again = plan_slices(changed, "p", 10)
    assert [a.content_hash == b.content_hash for a, b in zip(plans, again)] == [True, True, False]
    with pytest.raises(InputError, match="slice_size"):
        plan_slices(index, "p", 0)


def test_passthrough_leaves_out_what_img2dataset_writes():
    assert passthrough_columns(_index()) == ["uid"]
    assert passthrough_columns(_index().assign(lang="en")) == ["uid", "lang"]
