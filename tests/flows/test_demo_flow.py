"""The demo flow end to end on a small pool, twice: the second run downloads nothing."""

import json

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.client.schemas.sorting import TaskRunSort

from flows.demo import demo


def _latest_download_states(count):
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="download_slice")),
                                     sort=TaskRunSort.EXPECTED_START_TIME_DESC, limit=count)
    return [run.state.name for run in runs]


QUICK = {"samples_seen": 512, "batch_size": 64, "checkpoint_steps": 4, "warmup": 1}


def test_demo_runs_end_to_end_and_reruns_from_cache(prefect_harness, tmp_path):
    outputs = demo(workdir=str(tmp_path / "demo"), n_samples=400, seed=3, timeout=5, train_overrides=QUICK)
    for row in outputs["download vs planted"]:
        assert row["planted"] == row["downloaded"], row
    manifest = json.loads((tmp_path / "demo/store/pools/demo/manifest.json").read_text())
    assert manifest["rows"] == outputs["samples"] and manifest["rows"]["input"] == 400
    assert (tmp_path / "demo/web/truth.parquet").exists()
    assert _latest_download_states(2) == ["Cached", "Completed"]  # the demo's second pool_refresh embeds and filters
    assert outputs["model trained on the raw pool"].endswith("/checkpoints/epoch_2.pt")
    assert [t["key"] for t in outputs["evaluation"]["tasks"]] == ["demo/concepts", "demo/retrieval"]
    groups = outputs["zero-shot recall by concept frequency"]["groups"]
    assert [g["group"] for g in groups] == ["head (top 10%)", "torso", "tail (bottom 50%)"]
    assert sum(g["classes"] for g in groups) == 100
    clusters = {row["tree"]: row for row in outputs["clusters vs true concepts"]}
    assert set(clusters) == {"1 level", "3 levels, resampling"}
    assert clusters["1 level"]["clusters"] == clusters["3 levels, resampling"]["clusters"]

    again = demo(workdir=str(tmp_path / "demo"), n_samples=400, seed=3, timeout=5, train_overrides=QUICK)
    assert again["samples"] == outputs["samples"]
    assert _latest_download_states(2) == ["Cached", "Cached"]
    assert again["evaluation"] == outputs["evaluation"]
