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
    # caption 5 scores 0.005 with both image 1 and image 2: the tie goes to the lower index
    # (image 1), so caption 5 misses its image at k=2 as well
    assert metrics["image_retrieval_recall@2"] == pytest.approx(5 / 6)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(1.0)  # image 2 still finds caption 4
    assert metrics["mean_recall@1"] == pytest.approx((5 / 6 + 1) / 2)


def test_retrieval_chunks_do_not_change_the_answer():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(50, 8))
    text_image = np.repeat(np.arange(50), 3)
    texts = images[text_image] + rng.normal(scale=1.5, size=(150, 8))
    assert retrieval(images, texts, text_image, chunk=7) == retrieval(images, texts, text_image, chunk=1000)


def _retrieval_data(seed, n_images=40, per_image=3, dim=16):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim))
    text_image = np.repeat(np.arange(n_images), per_image)
    texts = images[text_image] + rng.normal(scale=1.2, size=(len(text_image), dim))
    return images, texts, text_image


def _assert_no_near_ties(candidates, queries, truth):
    # the invariance tests compare metrics exactly: no true score may lie near a competitor's
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    scores = unit(queries) @ unit(candidates).T
    true = truth[:, None] == np.arange(len(candidates))[None, :]
    for matrix, own in ((scores, true), (scores.T, true.T)):
        gaps = np.abs(matrix[:, :, None] - matrix[:, None, :])[own[:, :, None] & ~own[:, None, :]]
        assert gaps.min() > 1e-5


@pytest.mark.parametrize("seed", [1, 2])
def test_retrieval_does_not_depend_on_chunks_order_or_float_width(seed):
    images, texts, text_image = _retrieval_data(seed)
    _assert_no_near_ties(images, texts, text_image)
    expected = retrieval(images, texts, text_image, chunk=1000)
    assert 0 < expected["image_retrieval_recall@1"] < 1 and 0 < expected["text_retrieval_recall@1"] < 1
    for chunk in (1, 7, 64):
        assert retrieval(images, texts, text_image, chunk=chunk) == expected
    assert retrieval(images.astype(np.float32), texts.astype(np.float32), text_image, chunk=5) == expected
    rng = np.random.default_rng(seed + 100)
    image_order, text_order = rng.permutation(len(images)), rng.permutation(len(texts))
    new_index = np.argsort(image_order)  # old image index -> its row after the permutation
    permuted = retrieval(images[image_order], texts[text_order], new_index[text_image[text_order]], chunk=9)
    assert permuted == expected


def test_zeroshot_does_not_depend_on_order_or_float_width():
    rng = np.random.default_rng(3)
    classes = rng.normal(size=(12, 16))
    labels = rng.integers(0, 12, size=200)
    images = classes[labels] + rng.normal(scale=1.5, size=(200, 16))
    _assert_no_near_ties(classes, images, labels)
    expected = zeroshot_classification(images, classes, labels)
    assert 0 < expected["acc1"] < expected["acc5"] < 1
    assert zeroshot_classification(images.astype(np.float32), classes.astype(np.float32), labels) == expected
    order = rng.permutation(200)
    permuted = zeroshot_classification(images[order], classes, labels[order])
    assert permuted["acc1"] == expected["acc1"] and permuted["acc5"] == expected["acc5"]
    assert permuted["per_class_recall"] == expected["per_class_recall"]


def test_ties_go_to_the_lower_index():
    # images 0 and 1 are the same picture and their captions (texts 0 and 1) the same text: each
    # tie is won by index 0, so text 1 misses image 1 and image 1 misses text 1 at k=1
    images = np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0]])
    texts = np.array([[1.0, 0.1, 0], [1.0, 0.1, 0], [0, 1.0, 0.1]])
    metrics = retrieval(images, texts, np.array([0, 1, 2]), ks=(1, 2))
    assert metrics["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["text_retrieval_recall@1"] == pytest.approx(2 / 3)
    assert metrics["image_retrieval_recall@2"] == 1.0 and metrics["text_retrieval_recall@2"] == 1.0
    # the same pairs in the other order: now index 0 holds the pair that lost before
    swapped = retrieval(images[[1, 0, 2]], texts[[1, 0, 2]], np.array([0, 1, 2]), ks=(1,))
    assert swapped["image_retrieval_recall@1"] == pytest.approx(2 / 3)
    # zero-shot: classes 1 and 2 have the same embedding; an image of class 2 is counted as class 1
    classes = np.array([[1.0, 0], [0, 1.0], [0, 1.0]])
    zeroshot = zeroshot_classification(np.array([[0, 1.0], [0, 1.0], [1.0, 0]]), classes, np.array([1, 2, 0]))
    assert zeroshot["per_class_recall"] == [1.0, 1.0, 0.0] and zeroshot["acc5"] == 1.0


def test_an_image_without_texts_is_a_miss():
    metrics = retrieval(np.eye(3), np.eye(3)[:2], np.array([0, 1]), ks=(1, 5))
    assert metrics["text_retrieval_recall@5"] == pytest.approx(2 / 3)
    assert metrics["image_retrieval_recall@1"] == 1.0


def test_ties_as_torch_topk_breaks_them():
    # one-hot vectors: every score is exactly 0 or 1 in any arithmetic, so ties abound; with at
    # least 64 candidates, torch.topk(k=1) on CPU returns the lowest index among equal scores
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    eye = np.eye(12)
    image_dim = rng.integers(0, 12, size=70)
    text_image = np.repeat(np.arange(70), 2)
    text_dim = np.where(rng.random(140) < 0.6, image_dim[text_image], rng.integers(0, 12, size=140))
    images, texts = eye[image_dim], eye[text_dim]
    scores = torch.from_numpy(texts @ images.T)
    positive = torch.from_numpy(text_image[:, None] == np.arange(70)[None, :])
    image_hit = positive.gather(1, torch.topk(scores, 1, dim=1)[1]).any(dim=1)
    text_hit = positive.T.gather(1, torch.topk(scores.T, 1, dim=1)[1]).any(dim=1)
    metrics = retrieval(images, texts, text_image, ks=(1,), chunk=16)
    assert metrics["image_retrieval_recall@1"] == pytest.approx(image_hit.double().mean().item())
    assert metrics["text_retrieval_recall@1"] == pytest.approx(text_hit.double().mean().item())
    labels = rng.integers(0, 70, size=90)
    class_dim = rng.integers(0, 12, size=70)
    image_dim = np.where(rng.random(90) < 0.5, class_dim[labels], rng.integers(0, 12, size=90))
    logits = torch.from_numpy(eye[image_dim] @ eye[class_dim].T)
    acc1 = (torch.topk(logits, 1, dim=1)[1][:, 0] == torch.from_numpy(labels)).double().mean().item()
    assert zeroshot_classification(eye[image_dim], eye[class_dim], labels)["acc1"] == pytest.approx(acc1)
