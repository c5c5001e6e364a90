"""Evaluation sets on disk and the task list: layout, defaults, and clear errors."""

import pytest

from tasks.common.errors import InputError
from tasks.demo_pool.concepts import CONCEPTS
from tasks.demo_pool.eval_sets import generate_eval_sets
from tasks.evaluate.eval_sets import iter_samples, open_eval_set, read_tasklist


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    generate_eval_sets(root, seed=5, n_concepts=12, per_class=3, per_concept_retrieval=2)
    return root


def test_demo_sets_are_balanced_and_readable(eval_root):
    tasks = {t.key: t for t in read_tasklist(str(eval_root / "tasklist.yml"))}
    assert set(tasks) == {"demo/concepts", "demo/retrieval"}
    concepts = open_eval_set(tasks["demo/concepts"])
    assert concepts.classnames == [c.name for c in CONCEPTS[:12]] and "{c}" in concepts.templates[0]
    labels = [label for _, label in iter_samples(concepts)]
    assert sorted(labels) == sorted(list(range(12)) * 3)
    retrieval = open_eval_set(tasks["demo/retrieval"])
    assert retrieval.type == "retrieval"
    samples = list(iter_samples(retrieval))
    assert len(samples) == 24 and all(len(captions) == 3 for _, captions in samples)
    assert tasks["demo/retrieval"].main_metric == "mean_recall@1" and tasks["demo/concepts"].main_metric == "acc1"


def test_no_caption_and_no_image_occurs_twice(eval_root):
    # duplicate captions or images would tie in retrieval, and the tie rule would decide recall@1
    tasks = {t.key: t for t in read_tasklist(str(eval_root / "tasklist.yml"))}
    samples = list(iter_samples(open_eval_set(tasks["demo/retrieval"])))
    captions = [caption for _, texts in samples for caption in texts]
    assert len(captions) == 72 and len(set(captions)) == len(captions)
    for key in ("demo/retrieval", "demo/concepts"):
        images = [(image.size, image.tobytes()) for image, _ in iter_samples(open_eval_set(tasks[key]))]
        assert len(set(images)) == len(images)


def test_regenerating_is_deterministic(eval_root, tmp_path):
    other = tmp_path / "again"
    generate_eval_sets(other, seed=5, n_concepts=12, per_class=3, per_concept_retrieval=2)
    for name in ("concepts/test/0.tar", "retrieval/test/0.tar", "tasklist.yml"):
        assert (other / name).read_bytes() == (eval_root / name).read_bytes()


def test_datacomp_style_default_paths(tmp_path, eval_root):
    import shutil

    shutil.copytree(eval_root / "concepts", tmp_path / "wds_vtab-demo_test")
    (tmp_path / "tasklist.yml").write_text("vtab/demo:\n  name: Demo\n  main_metric: mean_per_class_recall\n")
    (task,) = read_tasklist(str(tmp_path / "tasklist.yml"))
    assert task.path == str(tmp_path / "wds_vtab-demo_test") and task.type == "zeroshot_classification"
    assert task.main_metric == "mean_per_class_recall"


def test_missing_class_names_names_the_file(tmp_path, eval_root):
    import shutil

    shutil.copytree(eval_root / "concepts", tmp_path / "set")
    (tmp_path / "set" / "classnames.txt").unlink()
    (tmp_path / "t.yml").write_text("x:\n  path: set\n")
    (task,) = read_tasklist(str(tmp_path / "t.yml"))
    with pytest.raises(InputError, match=r"class names in .*set/classnames.txt"):
        open_eval_set(task)


@pytest.mark.parametrize("content,message", [("", "expected a mapping"), ("x: [", "not valid YAML"),
                                             ("x:\n  type: detection\n  path: p\n", "type 'detection'")])
def test_bad_tasklists(tmp_path, content, message):
    (tmp_path / "t.yml").write_text(content)
    with pytest.raises(InputError, match=message):
        read_tasklist(str(tmp_path / "t.yml"))


def test_missing_tasklist_and_shards(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_tasklist(str(tmp_path / "none.yml"))
    (tmp_path / "t.yml").write_text("x:\n  path: nowhere\n  type: retrieval\n")
    (task,) = read_tasklist(str(tmp_path / "t.yml"))
    with pytest.raises(InputError, match="nowhere/test/nshards.txt"):
        open_eval_set(task)


def test_datacomp_task_kinds(tmp_path):
    (tmp_path / "t.yml").write_text("retrieval/flickr30k:\n  name: Flickr\nwilds/fmow:\n  name: FMoW\n"
                                    "fairness/geode:\n  name: GeoDE\nimagenet1k:\n  name: ImageNet\n")
    kinds = {t.key: t.type for t in read_tasklist(str(tmp_path / "t.yml"))}
    assert kinds == {"retrieval/flickr30k": "retrieval", "wilds/fmow": "unsupported",
                     "fairness/geode": "unsupported", "imagenet1k": "zeroshot_classification"}
