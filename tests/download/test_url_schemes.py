"""URLs other than http(s) are refused before anything downloads: one InputError naming the file,
the column, how many rows by scheme, and examples; nothing is planned or written to the store."""

import pandas as pd
import pytest

from tasks.common.catalog import Catalog
from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.download.pool import plan_pool_download
from tasks.download.pool_index import read_pool_index
from tasks.download.slices import DownloadConfig

BAD = {3: "file:///etc/passwd", 4: "ftp://host/a.jpg", 5: "FILE:///root/.aws/credentials",
       6: "data:image/png;base64," + "A" * 500, 7: "gopher://h/x", 8: "/local/path.jpg"}


def _index_with_bad_urls(path) -> pd.DataFrame:
    index = pd.DataFrame({"uid": [f"{i:032x}" for i in range(12)],
                          "url": [f"https://127.0.0.1:9/{i}.jpg" for i in range(12)], "text": "a caption"})
    for row, url in BAD.items():
        index.loc[row, "url"] = url
    index.to_parquet(path)
    return index


def test_the_error_names_file_column_counts_by_scheme_and_examples(tmp_path):
    index = _index_with_bad_urls(tmp_path / "pool.parquet")
    with pytest.raises(InputError) as refused:
        read_pool_index(str(tmp_path / "pool.parquet"))
    message = str(refused.value)
    assert "pool.parquet" in message and "column 'url' must hold http(s) URLs; 6 rows do not" in message
    assert "by scheme: file: 2, data: 1, ftp: 1, gopher: 1, none: 1" in message
    for row in (3, 4, 5):  # the first three, by uid
        assert f"uid {index.loc[row, 'uid']} has {BAD[row]!r}" in message
    assert "A" * 100 not in message  # a long data: URI is shortened
    assert len(message) < 800


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://host/a.jpg", "data:,x", "s3://bucket/a.jpg",
                                 "javascript:alert(1)", "http:/no-host", "  http://space-first/a.jpg"])
def test_each_other_scheme_is_refused_alone(tmp_path, url):
    index = pd.DataFrame({"uid": [f"{i:032x}" for i in range(3)], "text": "t",
                          "url": ["http://127.0.0.1:9/0.jpg", url, "HTTPS://127.0.0.1:9/2.jpg"]})
    index.to_parquet(tmp_path / "i.parquet")
    with pytest.raises(InputError, match=r"column 'url' must hold http\(s\) URLs; 1 rows do not"):
        read_pool_index(str(tmp_path / "i.parquet"))


def test_refused_before_anything_is_planned(tmp_path):
    _index_with_bad_urls(tmp_path / "pool.parquet")
    catalog = Catalog(Store(str(tmp_path / "store")))
    with pytest.raises(InputError, match="column 'url'"):
        plan_pool_download(catalog, str(tmp_path / "pool.parquet"), "p", 5, DownloadConfig())
    assert [f for f in catalog.store.walk_files() if not f.startswith("_probe")] == []
