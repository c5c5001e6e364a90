"""The demo's evaluation sets: held out from the pool, balanced over every concept.

In:  a seed, a folder, and how many images per concept.
Out: in the folder, clip_benchmark-layout sets (see :mod:`tasks.evaluate.eval_sets`) and
     ``tasklist.yml`` naming them:

- ``concepts/``: zero-shot classification over all 100 concepts, ``per_class`` images each,
  class names = the concepts' canonical names, a few prompt templates;
- ``retrieval/``: ``per_concept_retrieval`` images per concept, each with 3 English captions
  drawn from the pool's caption templates (no junk, no boilerplate). No caption and no image
  occurs twice in the set, so no tie between identical captions or images decides a recall.

Images are rendered like the pool's normal images, from random streams the pool's own images
never use. Rare concepts get as many images as common ones. Like real web pools, the demo pool
does leak a few evaluation images (copies of classification images 0-2 of some concepts, marked
``eval_leak`` in its truth file), for the evaluation-set dedup filter to find.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import yaml

from tasks.demo_pool.captions import TEMPLATES, _article
from tasks.demo_pool.concepts import CONCEPTS
from tasks.demo_pool.render import render_concept

ZEROSHOT_TEMPLATES = ("a photo of a {c}.", "a picture of a {c}.", "an image of a {c}.", "{c} icon",
                      "a drawing of a {c}.")
EVAL_STREAM = 1000  # random streams of the pool use 0-7; evaluation images use 1000+


def _render(concept_id: int, rng: np.random.Generator) -> bytes:
    side = int(rng.integers(64, 193))
    aspect = rng.uniform(0.75, 1.33)
    size = (int(round(side * aspect)), side) if aspect >= 1 else (side, int(round(side / aspect)))
    buffer = io.BytesIO()
    render_concept(CONCEPTS[concept_id], size, rng).save(buffer, format="JPEG", quality=int(rng.integers(80, 96)))
    return buffer.getvalue()


def classification_image(seed: int, concept_id: int, index: int) -> bytes:
    """The bytes of image ``index`` of ``concept_id`` in the classification set (also what the pool leaks)."""
    return _render(concept_id, np.random.default_rng([seed, EVAL_STREAM, concept_id, index]))


def _distinct_captions(concept_id: int, count: int, used: set[str], rng: np.random.Generator) -> list[str]:
    """``count`` captions of the concept, all different and none in ``used`` (which they join)."""
    options = dict.fromkeys(template.format(a=_article(name), c=name)
                            for name in CONCEPTS[concept_id].synonyms for template in TEMPLATES)
    options = [caption for caption in options if caption not in used]
    if len(options) < count:
        raise ValueError(f"concept {concept_id}: {count} distinct captions wanted, only {len(options)} exist")
    chosen = [options[i] for i in rng.permutation(len(options))[:count]]
    used.update(chosen)
    return chosen


def _distinct_image(concept_id: int, key: list[int], seen: set[bytes]) -> bytes:
    """An image of the concept whose bytes are not in ``seen`` (which it joins): from the random
    stream ``key``, or in the unlikely case of a repeat from ``key + [attempt]``."""
    for attempt in range(100):
        data = _render(concept_id, np.random.default_rng(key + [attempt] if attempt else key))
        if data not in seen:
            seen.add(data)
            return data
    raise RuntimeError(f"concept {concept_id}: 100 renders gave no new image")


def _write_set(folder: Path, samples: list[dict], shard_size: int = 1000) -> None:
    split = folder / "test"
    split.mkdir(parents=True)
    shards = [samples[i:i + shard_size] for i in range(0, len(samples), shard_size)]
    for number, shard in enumerate(shards):
        with tarfile.open(split / f"{number}.tar", "w") as tar:
            for sample in shard:
                for ext, data in sample.items():
                    if ext == "__key__":
                        continue
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size, info.mtime = len(data), 0
                    tar.addfile(info, io.BytesIO(data))
    (split / "nshards.txt").write_text(f"{len(shards)}\n")


def generate_eval_sets(folder: str | os.PathLike, seed: int = 0, n_concepts: int = 100, per_class: int = 10,
                       per_concept_retrieval: int = 3) -> str:
    """Write both sets and the task list (skipped if a complete identical one exists); return the task list path."""
    root = Path(folder)
    config = {"seed": seed, "n_concepts": n_concepts, "per_class": per_class,
              "per_concept_retrieval": per_concept_retrieval, "version": 2}
    marker = root / "generated.json"
    if marker.exists() and json.loads(marker.read_text()) == config:
        return str(root / "tasklist.yml")
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)

    classification = []
    for concept_id in range(n_concepts):
        for i in range(per_class):
            classification.append({"jpg": classification_image(seed, concept_id, i), "cls": str(concept_id).encode()})
    order = np.random.default_rng([seed, EVAL_STREAM + 1]).permutation(len(classification))
    classification = [dict(classification[i], __key__=f"s{n:07d}") for n, i in enumerate(order)]
    _write_set(root / "concepts", classification)
    (root / "concepts" / "classnames.txt").write_text("\n".join(c.name for c in CONCEPTS[:n_concepts]) + "\n")
    (root / "concepts" / "zeroshot_classification_templates.txt").write_text("\n".join(ZEROSHOT_TEMPLATES) + "\n")

    retrieval, used_captions, seen_images = [], set(), set()
    for concept_id in range(n_concepts):
        captions = _distinct_captions(concept_id, 3 * per_concept_retrieval, used_captions,
                                      np.random.default_rng([seed, EVAL_STREAM + 3, concept_id]))
        for i in range(per_concept_retrieval):
            image = _distinct_image(concept_id, [seed, EVAL_STREAM + 2, concept_id, i], seen_images)
            retrieval.append({"__key__": f"s{len(retrieval):07d}", "jpg": image,
                              "txt": "\n".join(captions[3 * i:3 * i + 3]).encode(), "cls": str(concept_id).encode()})
    _write_set(root / "retrieval", retrieval)
    (root / "retrieval" / "dataset_type.txt").write_text("retrieval\n")

    tasklist = {
        "demo/concepts": {"name": "Demo concepts (balanced, 100 classes)", "path": "concepts",
                          "type": "zeroshot_classification", "main_metric": "acc1",
                          "num_classes": n_concepts, "random_score": round(1 / n_concepts, 6), "size": len(classification)},
        "demo/retrieval": {"name": "Demo image-text retrieval", "path": "retrieval", "type": "retrieval",
                           "main_metric": "mean_recall@1", "size": len(retrieval)},
    }
    (root / "tasklist.yml").write_text(yaml.safe_dump(tasklist, sort_keys=False))
    marker.write_text(json.dumps(config))
    return str(root / "tasklist.yml")
