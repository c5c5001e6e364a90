"""Evaluating a real checkpoint on the demo sets: results per task, skipping finished ones, bad inputs."""

import json

import pytest

from tasks.common.errors import InputError
from tasks.common.store import Store
from tasks.demo_pool.eval_sets import generate_eval_sets
from tasks.evaluate.runner import evaluate_checkpoint, read_results


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint, tmp_path_factory):
    return Store(str(tmp_path_factory.mktemp("eval-store"))), tiny_checkpoint


@pytest.fixture(scope="module")
def tasklist(tmp_path_factory):
    return generate_eval_sets(tmp_path_factory.mktemp("eval-sets"), seed=2, n_concepts=10, per_class=4,
                              per_concept_retrieval=2)


def test_results_per_task_and_skip_of_finished_ones(checkpoint, tasklist):
    store, ckpt = checkpoint
    messages = []
    summary = evaluate_checkpoint(store, "Tiny-ViT-48px", ckpt, tasklist, "eval/run1", log=messages.append)
    lines = read_results(store, "eval/run1")
    assert [line["key"] for line in lines] == ["demo/concepts", "demo/retrieval"]
    concepts, retrieval = lines
    assert concepts["metrics"]["n_images"] == 40 and len(concepts["metrics"]["per_class_recall"]) == 10
    assert 0 <= concepts["metrics"]["acc1"] <= concepts["metrics"]["acc5"] <= 1
    assert retrieval["metrics"]["n_images"] == 20 and retrieval["metrics"]["n_texts"] == 60
    assert [t["key"] for t in summary["tasks"]] == ["demo/concepts", "demo/retrieval"]
    assert summary["average"] == pytest.approx(round((concepts["main_score"] + retrieval["main_score"]) / 2, 4))
    assert store.read_json("eval/run1/summary.json") == summary

    before = store.read_bytes("eval/run1/results.jsonl")
    messages.clear()
    again = evaluate_checkpoint(store, "Tiny-ViT-48px", ckpt, tasklist, "eval/run1", log=messages.append)
    assert again == summary and store.read_bytes("eval/run1/results.jsonl") == before
    assert messages == ["evaluation demo/concepts: already in eval/run1/results.jsonl, skipped",
                        "evaluation demo/retrieval: already in eval/run1/results.jsonl, skipped"]


def test_only_unfinished_tasks_run(checkpoint, tasklist):
    store, ckpt = checkpoint
    evaluate_checkpoint(store, "Tiny-ViT-48px", ckpt, tasklist, "eval/run2")
    lines = read_results(store, "eval/run2")
    store.write_bytes("eval/run2/results.jsonl", (json.dumps(lines[0]) + "\n").encode())  # retrieval "crashed"
    messages = []
    evaluate_checkpoint(store, "Tiny-ViT-48px", ckpt, tasklist, "eval/run2", log=messages.append)
    assert messages[0].endswith("skipped") and messages[1].startswith("evaluation demo/retrieval: mean_recall@1")
    assert [line["key"] for line in read_results(store, "eval/run2")] == ["demo/concepts", "demo/retrieval"]


def test_missing_checkpoint_and_wrong_model(checkpoint, tasklist, tmp_path):
    store, ckpt = checkpoint
    with pytest.raises(InputError, match=r"nope\.pt: no such file"):
        evaluate_checkpoint(store, "Tiny-ViT-48px", str(tmp_path / "nope.pt"), tasklist, "eval/bad")
    with pytest.raises(InputError, match="does not fit model 'RN50'"):
        evaluate_checkpoint(store, "RN50", ckpt, tasklist, "eval/bad")
    assert not store.exists("eval/bad/results.jsonl")
