"""pipeline: pool_refresh, curate (tree and subsets), then train_eval on every subset, under Prefect's harness."""

import tarfile

import pandas as pd
import pytest

from flow_support import FAST_DOWNLOAD, latest_task_states
from flows.pipeline import pipeline
from tasks.common.errors import InputError
from tasks.demo_pool.eval_sets import generate_eval_sets

QUICK = {"samples_seen": 128, "batch_size": 64, "checkpoint_steps": 1, "warmup": 1}
FILTERS = {"min_image_side": 48, "clip_score_top_fraction": 0.9}
SUBSETS = {
    "balanced": [{"step": "filters"}, {"step": "hkmeans", "target": 60}],
    "metaclip": {"recipe": [{"step": "metaclip", "target": 60}], "ngrams": {"min_unigram_count": 10}},
    "flat-closest": {"recipe": [{"step": "hkmeans", "target": 30, "mode": "flat", "selection": "c"}],
                     "reshard": False},
}


@pytest.fixture(scope="module")
def tasklist(tmp_path_factory):
    return generate_eval_sets(tmp_path_factory.mktemp("sets"), seed=5, n_concepts=20, per_class=2,
                              per_concept_retrieval=1)


def test_pipeline_trains_and_evaluates_every_subset(prefect_harness, small_index, web_server, tiny_checkpoint,
                                                    tasklist, tmp_path):
    store = str(tmp_path / "store")
    arguments = dict(pool_index=str(small_index), store=store, tasklist=tasklist, pool_name="p",
                     embedder={"model": "Tiny-ViT-48px", "checkpoint": tiny_checkpoint, "batch_size": 64},
                     subsets=SUBSETS, download=FAST_DOWNLOAD, filters=FILTERS,
                     clustering={"levels": [20, {"k": 5, "resampling_steps": 2}], "engine": "dask"},
                     scale="tiny", train_overrides=QUICK)
    state = pipeline(**arguments, return_state=True)
    out = state.result()
    assert set(out["results"]) == {"balanced", "metaclip"}  # flat-closest is not resharded: not trained
    flat = pd.read_parquet(out["subsets"]["flat-closest"]["outputs"]["parquet"])
    assert len(flat) == 30 and "shards" not in out["subsets"]["flat-closest"]["outputs"]
    for name, subset in ((n, s) for n, s in out["subsets"].items() if n in out["results"]):
        table = pd.read_parquet(subset["outputs"]["parquet"])
        trained = out["results"][name]["train"]
        assert trained["rows"]["train_samples"] == len(table) == subset["rows"]["subset"]
        assert trained["inputs"]["data"] == subset["content_hash"]
        members = set()
        for shard in subset["outputs"]["shards"]:
            with tarfile.open(shard["tar"]) as tar:
                members.update(name.split(".")[0] for name in tar.getnames())
        assert members == set(table["uid"])
        assert [task["key"] for task in out["results"][name]["eval"]["tasks"]] == ["demo/concepts", "demo/retrieval"]
    assert len(pd.read_parquet(out["subsets"]["balanced"]["outputs"]["parquet"])) == 60
    # every balanced sample passed the filters
    kept = out["pool"]["filters"]["rows"]["kept"]
    assert out["tree"]["rows"]["samples"] == kept

    again = pipeline(**arguments, return_state=True)
    assert again.result()["results"] == out["results"]
    assert latest_task_states("make_subset", 3) == ["Cached", "Cached", "Cached"]
    assert latest_task_states("train_clip", 2) == ["Cached", "Cached"]
    assert latest_task_states("cluster_pool", 1) == ["Cached"]


def test_pipeline_rejects_a_bad_recipe_before_any_work(prefect_harness, small_index, tasklist, tmp_path):
    with pytest.raises(InputError, match="target=0 must be a positive integer"):
        pipeline(pool_index=str(small_index), store=str(tmp_path / "s"), tasklist=tasklist,
                 embedder={"model": "Tiny-ViT-48px", "checkpoint": "x"},
                 subsets={"bad": [{"step": "random", "target": 0}]})
    assert not (tmp_path / "s" / "pools").exists()
