"""Evaluation sets in clip_benchmark's webdataset layout, and the task list that names them.

An evaluation set is a folder (local or ``s3://``)::

    classnames.txt                          one class name per line (classification)
    zeroshot_classification_templates.txt   one prompt per line with "{c}" (classification)
    dataset_type.txt                        "retrieval" for retrieval sets (else classification)
    <split>/nshards.txt, <split>/0.tar ...  samples: an image (webp/png/jpg) and "cls" (class
                                            index) or "txt" (captions, one per line)

The task list is DataComp's ``tasklist.yml`` format: a mapping from task key to ``name``,
``main_metric`` (default ``acc1``; ``mean_recall@1`` for retrieval), and optionally ``path``
(default ``<eval_root>/wds_<key with / as ->_test``, DataComp's download layout), ``type``
(``zeroshot_classification`` or ``retrieval``; by default ``retrieval`` for ``retrieval/`` keys
or a ``dataset_type.txt`` saying so, ``unsupported`` for DataComp's ``wilds/``, ``fairness/``
and ``misc/`` tasks, which are skipped), ``split`` (default ``test``), ``random_score``, ``tags``.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field
from typing import Iterator

import fsspec
import yaml
from PIL import Image

from tasks.common.errors import InputError
from tasks.common import webdataset

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
TASK_TYPES = ("zeroshot_classification", "retrieval", "unsupported")
# DataComp task families that need metrics this project does not implement (WILDS, fairness, WinoGAViL)
UNSUPPORTED_PREFIXES = ("wilds/", "fairness/", "misc/")


@dataclass(frozen=True)
class EvalTask:
    key: str
    name: str
    path: str
    type: str
    split: str = "test"
    main_metric: str = "acc1"
    random_score: float | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)
    # fsspec options to read the set with (credentials of the store when it lives there); never shown
    storage_options: dict = field(default_factory=dict, repr=False, compare=False, hash=False)


@dataclass
class EvalSet:
    path: str
    type: str
    shards: list[str]
    classnames: list[str] | None = None
    templates: list[str] | None = None
    storage_options: dict = field(default_factory=dict, repr=False)


def _read_text(path: str, storage_options: dict | None = None) -> str | None:
    fs, p = fsspec.core.url_to_fs(path, **(storage_options or {}))
    if not fs.exists(p):
        return None
    with fs.open(p, "r", encoding="utf-8") as handle:
        return handle.read()


def read_tasklist(tasklist: str, eval_root: str | None = None, storage_options: dict | None = None) -> list[EvalTask]:
    """The tasks of a task list; ``storage_options``: fsspec options for the list and its sets."""
    options = dict(storage_options or {})
    text = _read_text(tasklist, options)
    if text is None:
        raise InputError(f"task list {tasklist!r}: no such file")
    try:
        entries = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"task list {tasklist!r}: not valid YAML: {exc}") from exc
    if not isinstance(entries, dict) or not entries:
        raise InputError(f"task list {tasklist!r}: expected a mapping of task keys to settings")
    base = eval_root or posixpath.dirname(tasklist)
    tasks = []
    for key, settings in entries.items():
        settings = settings or {}
        path = settings.get("path") or posixpath.join(base, f"wds_{key.replace('/', '-')}_test")
        if "://" not in path and not path.startswith("/"):
            path = posixpath.join(base, path)
        kind = settings.get("type") or _default_type(str(key), path, options)
        if kind not in TASK_TYPES:
            raise InputError(f"task list {tasklist!r}: task {key!r} has type {kind!r}, not one of {TASK_TYPES}")
        default_metric = "mean_recall@1" if kind == "retrieval" else "acc1"
        tasks.append(EvalTask(key=str(key), name=settings.get("name", str(key)), path=path, type=kind,
                              split=settings.get("split", "test"),
                              main_metric=settings.get("main_metric", default_metric),
                              random_score=settings.get("random_score"), tags=tuple(settings.get("tags", ())),
                              storage_options=options))
    return tasks


def _default_type(key: str, path: str, storage_options: dict) -> str:
    if key.startswith(UNSUPPORTED_PREFIXES):
        return "unsupported"
    if key.startswith("retrieval/"):
        return "retrieval"
    declared = (_read_text(posixpath.join(path, "dataset_type.txt"), storage_options) or "").strip().lower()
    return "retrieval" if declared == "retrieval" else "zeroshot_classification"


def open_eval_set(task: EvalTask) -> EvalSet:
    """Check the folder of ``task`` and list its shards; errors name the missing file."""
    nshards_file = posixpath.join(task.path, task.split, "nshards.txt")
    options = task.storage_options
    nshards = _read_text(nshards_file, options)
    if nshards is None:
        raise InputError(f"evaluation set {task.key!r}: missing {nshards_file}")
    shards = [posixpath.join(task.path, task.split, f"{i}.tar") for i in range(int(nshards.strip()))]
    for shard in shards:
        fs, p = fsspec.core.url_to_fs(shard, **options)
        if not fs.exists(p):
            raise InputError(f"evaluation set {task.key!r}: missing shard {shard}")
    if task.type == "retrieval":
        return EvalSet(task.path, task.type, shards, storage_options=options)
    names_file = posixpath.join(task.path, "classnames.txt")
    templates_file = posixpath.join(task.path, "zeroshot_classification_templates.txt")
    names, templates = _read_text(names_file, options), _read_text(templates_file, options)
    if not names or not names.strip():
        raise InputError(f"evaluation set {task.key!r}: zero-shot classification needs class names in {names_file}")
    if not templates or not templates.strip():
        raise InputError(f"evaluation set {task.key!r}: zero-shot classification needs prompt templates in "
                         f"{templates_file}")
    template_lines = [t.strip() for t in templates.splitlines() if t.strip()]
    if not all("{c}" in t for t in template_lines):
        raise InputError(f"evaluation set {task.key!r}: every template in {templates_file} needs '{{c}}'")
    return EvalSet(task.path, task.type, shards, [n.strip() for n in names.splitlines() if n.strip()],
                   template_lines, storage_options=options)


def iter_samples(eval_set: EvalSet) -> Iterator[tuple[Image.Image, object]]:
    """(RGB image, class index) or (RGB image, list of captions), in shard order.

    A damaged shard raises :class:`~tasks.common.errors.StageFailed` naming it (see
    :mod:`tasks.common.webdataset`); these sets record no sample count to check against.
    """
    for shard in eval_set.shards:
        for _, files in webdataset.iter_samples(shard, storage_options=eval_set.storage_options):
            yield _decode({ext.lower(): data for ext, data in files.items()}, eval_set, shard)


def _decode(sample: dict[str, bytes], eval_set: EvalSet, shard: str):
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if image_ext is None:
        raise InputError(f"evaluation shard {shard}: a sample has no image ({sorted(sample)})")
    image = Image.open(io.BytesIO(sample[image_ext])).convert("RGB")
    if eval_set.type == "retrieval":
        if "txt" not in sample:
            raise InputError(f"evaluation shard {shard}: a retrieval sample has no txt")
        return image, [line for line in sample["txt"].decode("utf-8").splitlines() if line.strip()]
    if "cls" not in sample:
        raise InputError(f"evaluation shard {shard}: a classification sample has no cls")
    return image, int(sample["cls"].decode().strip())
