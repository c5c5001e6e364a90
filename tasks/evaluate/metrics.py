"""Zero-shot classification and retrieval metrics on L2-normalised embeddings.

In:  numpy arrays of embeddings (rows normalised by the caller or here) and labels.
Out: dicts of floats, named as DataComp and clip_benchmark name them.
"""

from __future__ import annotations

import numpy as np


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def class_embeddings(template_embeddings: np.ndarray) -> np.ndarray:
    """(classes, templates, dim) -> (classes, dim): the normalised mean of normalised template embeddings."""
    per_template = template_embeddings / np.maximum(np.linalg.norm(template_embeddings, axis=-1, keepdims=True), 1e-12)
    return normalise(per_template.mean(axis=1))


def zeroshot_classification(image_embeddings: np.ndarray, class_embeds: np.ndarray,
                            labels: np.ndarray) -> dict:
    """acc1, acc5, mean per-class recall, and the recall of every class (NaN where a class has no image)."""
    labels = np.asarray(labels)
    logits = normalise(image_embeddings) @ normalise(class_embeds).T
    k = min(5, logits.shape[1])
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    hit1 = top[:, 0] == labels
    hit5 = (top == labels[:, None]).any(axis=1)
    n_classes = class_embeds.shape[0]
    counts = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels, weights=hit1, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, correct / np.maximum(counts, 1), np.nan)
    return {
        "acc1": float(hit1.mean()),
        "acc5": float(hit5.mean()),
        "mean_per_class_recall": float(np.nanmean(per_class)),
        "per_class_recall": [None if np.isnan(v) else float(v) for v in per_class],
        "n_images": int(len(labels)),
    }


def retrieval(image_embeddings: np.ndarray, text_embeddings: np.ndarray, text_image: np.ndarray,
              ks: tuple[int, ...] = (1, 5, 10), chunk: int = 1024) -> dict:
    """Image->text and text->image recall@k; ``text_image[j]`` is the image that text j describes.

    Text retrieval (image -> text) counts an image as found when any of its texts ranks in the top
    k; image retrieval (text -> image) counts a text when its image ranks in the top k. A rank is
    the number of candidates scoring strictly higher. Memory stays at ``chunk`` x max(images, texts).
    """
    text_image = np.asarray(text_image)
    images, texts = normalise(image_embeddings), normalise(text_embeddings)
    n_images, n_texts = len(images), len(texts)
    image_rank = np.empty(n_texts, dtype=np.int64)   # rank of its image, for each text
    own_text_rank = np.empty(n_texts, dtype=np.int64)  # rank of the text within its image's row
    for start in range(0, n_texts, chunk):
        part = slice(start, min(start + chunk, n_texts))
        columns = images @ texts[part].T                          # images x chunk
        true = columns[text_image[part], np.arange(columns.shape[1])]
        image_rank[part] = (columns > true[None, :]).sum(axis=0)
        rows = images[text_image[part]] @ texts.T                 # chunk x texts
        own_text_rank[part] = (rows > true[:, None]).sum(axis=1)
    best_text_rank = np.full(n_images, np.iinfo(np.int64).max)
    np.minimum.at(best_text_rank, text_image, own_text_rank)
    out: dict = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float((image_rank < k).mean())
        out[f"text_retrieval_recall@{k}"] = float((best_text_rank < k).mean())
    out["mean_recall@1"] = (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"]) / 2
    out["n_images"], out["n_texts"] = int(n_images), int(n_texts)
    return out
