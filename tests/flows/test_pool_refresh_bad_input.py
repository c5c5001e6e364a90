"""Bad input to pool_refresh: one clear error before any download, and nothing half-written."""

import pandas as pd
import pytest

from flow_support import FAST_DOWNLOAD, task_runs
from flows.pool_refresh import pool_refresh
from tasks.common.errors import InputError, StoreError


@pytest.fixture
def index_frame(small_index):
    return pd.read_parquet(small_index)


def _run(index, store, **overrides):
    options = dict(FAST_DOWNLOAD, pool_name="bad")
    options.update(overrides)
    return pool_refresh(pool_index=str(index), store=str(store), **options)


def _cases(tmp_path, frame):
    cases = {}
    path = tmp_path / "renamed.parquet"
    frame.rename(columns={"text": "caption"}).to_parquet(path)
    cases["missing column"] = (path, {}, InputError, r"renamed\.parquet.*missing column 'text'")
    path = tmp_path / "broken.parquet"
    path.write_bytes(frame.to_parquet()[:200])
    cases["unreadable parquet"] = (path, {}, InputError, r"broken\.parquet.*not a readable parquet")
    path = tmp_path / "empty.parquet"
    frame.iloc[:0].to_parquet(path)
    cases["empty pool"] = (path, {}, InputError, "empty")
    path = tmp_path / "ftp.parquet"
    frame.assign(url=frame["url"].where(frame.index != 7, "ftp://127.0.0.1/x.jpg")).to_parquet(path)
    cases["not http"] = (path, {}, InputError, rf"ftp\.parquet.*'url'.*uid {frame.loc[7, 'uid']}")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases["store not writable"] = (tmp_path / "good.parquet", {"store": blocker / "store"}, StoreError, "a-file/store")
    cases["bad pool name"] = (tmp_path / "good.parquet", {"pool_name": "../escape"}, InputError, "pool_name")
    cases["bad shard size"] = (tmp_path / "good.parquet", {"shard_size": 0}, InputError, "shard_size")
    cases["bad resize mode"] = (tmp_path / "good.parquet", {"resize_mode": "stretch"}, InputError, "resize_mode")
    return cases


@pytest.mark.parametrize("case", ["missing column", "unreadable parquet", "empty pool", "not http",
                                  "store not writable", "bad pool name", "bad shard size", "bad resize mode"])
def test_bad_input_fails_before_any_download(case, prefect_harness, index_frame, web_server, tmp_path):
    index_frame.to_parquet(tmp_path / "good.parquet")
    index, overrides, error, message = _cases(tmp_path, index_frame)[case]
    store = overrides.pop("store", tmp_path / "store")
    before = sum(web_server.requests.values())
    with pytest.raises(error, match=message):
        _run(index, store, **overrides)
    assert sum(web_server.requests.values()) == before
    if store.exists():
        assert not (store / "pools" / "bad" / "slices").exists()
        assert not list(store.rglob("*.tar"))


def test_bad_input_is_not_retried(prefect_harness, index_frame, tmp_path):
    index_frame.drop(columns="uid").to_parquet(tmp_path / "nouid.parquet")
    state = pool_refresh(pool_index=str(tmp_path / "nouid.parquet"), store=str(tmp_path / "s"), pool_name="bad",
                         return_state=True, **FAST_DOWNLOAD)
    assert state.is_failed()
    runs = task_runs(state.state_details.flow_run_id)
    assert [(run.name.rsplit("-", 1)[0], run.state.name, run.run_count) for run in runs] == [
        ("plan_pool_download", "Failed", 1)]
