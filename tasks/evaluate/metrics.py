"""Zero-shot classification and retrieval metrics on L2-normalised embeddings.

In:  numpy arrays of embeddings (any float width; rows normalised here) and labels.
Out: dicts of floats, named as DataComp and clip_benchmark name them.

Every comparison of a true pair's score with its competitors uses scores of one and the same
matrix product (one block of queries against all candidates), so the answer does not depend on
chunking, row order or the BLAS kernels. Scores are computed in float64 and rounded to float32:
scores equal in exact arithmetic (duplicate captions, duplicate images) then compare equal on any
machine, and the tie rule, not the last bits, decides them.

Ties are broken as ``torch.topk`` does on CPU for k=1 (measured with torch 2.14): among equal
scores the candidate with the lower index comes first. A candidate's rank is the number of
candidates scoring strictly higher plus those scoring equal at a lower index; it is in the top k
when its rank is below k.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 4096  # query rows per product in zero-shot classification
_MISS = np.iinfo(np.int64).max  # the rank of a true candidate that cannot be found


def normalise(rows: np.ndarray) -> np.ndarray:
    """Rows (any float width) -> float64 rows of unit L2 norm (all-zero rows stay zero)."""
    rows = np.asarray(rows, dtype=np.float64)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def class_embeddings(template_embeddings: np.ndarray) -> np.ndarray:
    """(classes, templates, dim) -> (classes, dim): the normalised mean of normalised template embeddings."""
    template_embeddings = np.asarray(template_embeddings, dtype=np.float64)
    per_template = template_embeddings / np.maximum(np.linalg.norm(template_embeddings, axis=-1, keepdims=True), 1e-12)
    return normalise(per_template.mean(axis=1))


def _scores(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Unit float64 rows (q, d) and (c, d) -> (q, c) float32 scores of one product."""
    return (queries @ candidates.T).astype(np.float32)


def _ranks(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """(q, c) scores and one true candidate per row -> int64 rank of that candidate in its row.

    A NaN true score is a miss at every k.
    """
    true = scores[np.arange(len(scores)), true_index][:, None]
    lower = np.arange(scores.shape[1])[None, :] < true_index[:, None]
    ranks = (scores > true).sum(axis=1) + ((scores == true) & lower).sum(axis=1)
    return np.where(np.isnan(true[:, 0]), _MISS, ranks)


def zeroshot_classification(image_embeddings: np.ndarray, class_embeds: np.ndarray,
                            labels: np.ndarray) -> dict:
    """acc1, acc5, mean per-class recall, and the recall of every class (NaN where a class has no image)."""
    labels = np.asarray(labels)
    images, classes = normalise(image_embeddings), normalise(class_embeds)
    rank = np.concatenate([_ranks(_scores(images[start:start + _BLOCK], classes), labels[start:start + _BLOCK])
                           for start in range(0, len(images), _BLOCK)] or [np.empty(0, np.int64)])
    k = min(5, classes.shape[0])
    hit1, hit5 = rank < 1, rank < k
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
    k (clip_benchmark's ``recall_at_k``); an image without texts is a miss. Image retrieval
    (text -> image) counts a text when its image ranks in the top k. Ranks and ties as in the
    module doc. Memory stays at ``chunk`` x max(images, texts).
    """
    text_image = np.asarray(text_image, dtype=np.int64)
    images, texts = normalise(image_embeddings), normalise(text_embeddings)
    n_images, n_texts = len(images), len(texts)
    image_rank = np.empty(n_texts, dtype=np.int64)        # rank of its image, for each text
    best_text_rank = np.full(n_images, _MISS)              # rank of its best text, for each image
    for start in range(0, n_texts, chunk):
        part = slice(start, min(start + chunk, n_texts))
        image_rank[part] = _ranks(_scores(texts[part], images), text_image[part])
    for start in range(0, n_images if n_texts else 0, chunk):
        part = slice(start, min(start + chunk, n_images))
        scores = _scores(images[part], texts)                                  # chunk x texts
        own = text_image[None, :] == np.arange(part.start, part.stop)[:, None]
        # the own text that ranks best: the highest score, the lowest index among equals (argmax)
        best = np.argmax(np.where(own, scores, -np.inf), axis=1)
        best_text_rank[part] = np.where(own.any(axis=1), _ranks(scores, best), _MISS)
    out: dict = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float((image_rank < k).mean())
        out[f"text_retrieval_recall@{k}"] = float((best_text_rank < k).mean())
    out["mean_recall@1"] = (out["image_retrieval_recall@1"] + out["text_retrieval_recall@1"]) / 2
    out["n_images"], out["n_texts"] = int(n_images), int(n_texts)
    return out
