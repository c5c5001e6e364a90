"""Metrics on embeddings built so that the answer is known."""

import numpy as np
import pytest

from tasks.evaluate.metrics import class_embeddings, retrieval, zeroshot_classification


def _one_hot(indices, dim):
    out = np.zeros((len(indices), dim), dtype=np.float32)
    out[np.arange(len(indices)), indices] = 1
    return out


def test_zeroshot_with_a_known_answer():
    classes = np.eye(4, dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2, 3, 3, 3])
    predicted = np.array([0, 0, 1, 2, 2, 3, 0, 3])  # two mistakes: an image of 1 and one of 3
    images = _one_hot(predicted, 4) + 0.01
    metrics = zeroshot_classification(images, classes, labels)
    assert metrics["acc1"] == pytest.approx(6 / 8)
    assert metrics["per_class_recall"] == pytest.approx([1.0, 0.5, 1.0, 2 / 3])
    assert metrics["mean_per_class_recall"] == pytest.approx((1 + 0.5 + 1 + 2 / 3) / 4)
    assert metrics["acc5"] == 1.0  # four classes: every label is in the top 5


def test_acc5_counts_second_guesses():
    rng = np.random.default_rng(0)
    classes = np.linalg.qr(rng.normal(size=(20, 20)))[0][:10]  # 10 orthonormal class vectors
    labels = np.arange(10)
    # each image is mostly the next class, a bit its own: wrong at top-1, right at top-2
    images = classes[(labels + 1) % 10] + 0.5 * classes[labels]
    metrics = zeroshot_classification(images, classes, labels)
    assert metrics["acc1"] == 0.0 and metrics["acc5"] == 1.0


def test_class_embeddings_average_the_templates():
    templates = np.array([[[2.0, 0], [0, 1]], [[0, 3.0], [0, 1]]])  # (classes, templates, dim)
    out = class_embeddings(templates)
    assert out == pytest.approx(np.array([[1, 1], [0, 1]]) / np.array([[np.sqrt(2)], [1]]))


def test_class_without_images_is_left_out_of_the_mean():
    metrics = zeroshot_classification(_one_hot([0, 1], 3), np.eye(3), np.array([0, 1]))
    assert metrics["per_class_recall"][2] is None and metrics["mean_per_class_recall"] == 1.0


def test_retrieval_with_a_known_answer():
    # 3 images, 2 captions each; caption vectors equal their image's, except caption 5 (of image 2),
    # which looks like image 0.
    images = np.eye(3, dtype=np.float32)
    text_image = np.array([0, 0, 1, 1, 2, 2])
    texts = images[[0, 0, 1, 1, 2, 0]] + 0.001 * np.arange(6)[:, None]
    metrics = retrieval(images, texts, text_image, ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(5 / 6)
    assert metrics["image_retrieval_recall@2"] == pytest.approx(1.0)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1.0)  # image 2 still finds caption 4
    assert metrics["mean_recall@1"] == pytest.approx((5 / 6 + 1) / 2)


def test_retrieval_chunks_do_not_change_the_answer():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(50, 8))
    text_image = np.repeat(np.arange(50), 3)
    texts = images[text_image] + rng.normal(scale=1.5, size=(150, 8))
    assert retrieval(images, texts, text_image, chunk=7) == retrieval(images, texts, text_image, chunk=1000)
