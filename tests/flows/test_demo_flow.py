"""The demo flow end to end on a small pool, twice: the second run downloads nothing."""

import json

from flow_support import latest_task_states
from flows.demo import demo


def _latest_download_states(count):
    return latest_task_states("download_slice", count)


QUICK = {"samples_seen": 512, "batch_size": 64, "checkpoint_steps": 4, "warmup": 1}


def test_demo_runs_end_to_end_and_reruns_from_cache(prefect_harness, tmp_path):
    outputs = demo(workdir=str(tmp_path / "demo"), n_samples=400, seed=3, timeout=5, train_overrides=QUICK)
    for row in outputs["download vs planted"]:
        assert row["planted"] == row["downloaded"], row
    manifest = json.loads((tmp_path / "demo/store/pools/demo/manifest.json").read_text())
    assert manifest["rows"] == outputs["samples"] and manifest["rows"]["input"] == 400
    assert (tmp_path / "demo/web/truth.parquet").exists()
    assert _latest_download_states(1) == ["Completed"]
    assert outputs["model trained on the raw pool"].endswith("/checkpoints/epoch_2.pt")
    assert [t["key"] for t in outputs["evaluation"]["tasks"]] == ["demo/concepts", "demo/retrieval"]
    groups = outputs["zero-shot recall by concept frequency"]["groups"]
    assert [g["group"] for g in groups] == ["head (top 10%)", "torso", "tail (bottom 50%)"]
    assert sum(g["classes"] for g in groups) == 100
    clusters = {row["tree"]: row for row in outputs["clusters vs true concepts"]}
    assert set(clusters) == {"1 level", "4 levels, resampling"}
    assert clusters["1 level"]["clusters"] == clusters["4 levels, resampling"]["clusters"]
    arms = {row["arm"]: row for row in outputs["curation A/B"]["arms"]}
    assert set(arms) == {"random", "filters", "hkmeans", "metaclip", "composition"}
    assert len({row["samples"] for row in arms.values()}) == 1  # equal sizes
    assert outputs["curation A/B"]["winner_by_acc1"] in arms
    balance = {row["samples of"] for row in outputs["subsets vs true concepts"]}
    assert balance >= set(arms) | {"pool (downloaded)", "hkmeans 1 level", "hkmeans flat"}

    again = demo(workdir=str(tmp_path / "demo"), n_samples=400, seed=3, timeout=5, train_overrides=QUICK)
    assert again["samples"] == outputs["samples"]
    assert _latest_download_states(1) == ["Cached"]  # one download per demo run
    assert again["evaluation"] == outputs["evaluation"]
    assert again["curation A/B"] == outputs["curation A/B"]
