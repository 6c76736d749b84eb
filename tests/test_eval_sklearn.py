"""The hand-written field protocols against scikit-learn on the same numbers.

Linear probe (loupe_core/eval/linear_probe.py): ``sklearn.linear_model.LogisticRegression``
(L-BFGS, L2) minimises ``C * sum_n CE_n + ||W||^2 / 2`` with the intercept not penalised; the
probe minimises ``mean_n CE_n + weight_decay / 2 * ||W||^2`` over a full softmax layer, also with
an unpenalised bias. Same minimiser when ``C = 1 / (N * weight_decay)`` for three or more classes
(sklearn's multinomial model is the same full softmax layer). With two classes sklearn fits one
weight vector ``v = W_1 - W_0``; the probe's penalty at its optimum is then
``weight_decay / 4 * ||v||^2``, so ``C = 2 / (N * weight_decay)``.

Tolerances: the regularised objective within 1e-9 of sklearn's; the weights within 1e-3 and the
centred test logits within 1e-2 (absolute; weights of size 1-4, logits up to ~20); the
predicted class the same on 99.5% of the test points and test accuracy within 1 point (seen:
identical). Why not tighter: at the default ``weight_decay=1e-4`` the objective is flat (its
curvature is ~weight_decay), and torch's L-BFGS stops on ``tolerance_change=1e-12`` with a
gradient of ~3e-8, about 2e-4 from sklearn's weights (its objective 3e-11 above sklearn's);
at ``weight_decay=1e-2`` they agree to 1e-5.

What is not the field's protocol: CLIP's linear probe sweeps C on a validation split (and
refits); the probe here uses a fixed ``weight_decay`` (``WEIGHT_DECAY``) with no sweep.

Retrieval recall@k (loupe_core/eval/retrieval.py) against ``sklearn.metrics.top_k_accuracy_score``.
sklearn breaks ties by label index (the highest index first); the project counts ties against
the model. So each query's candidates are reordered with its positive at index 0: among equal
scores sklearn then ranks the positive last, the pessimistic rule. Without ties both agree in
the original order too. Image->text has several positives per image: a hit at k when some
positive, ranked by sklearn among itself and all the negatives, is in the top k.
"""
import numpy as np
import pytest
import torch

sklearn = pytest.importorskip("sklearn", reason="scikit-learn is not installed: pip install -e '.[dev]'")
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import top_k_accuracy_score  # noqa: E402

from loupe_core.eval.linear_probe import (WEIGHT_DECAY, fit_linear_probe, linear_probe_accuracy,  # noqa: E402
                                          probe_objective)
from loupe_core.eval.retrieval import retrieval_recalls  # noqa: E402


# ---------------------------------------------------------------- linear probe
def _blobs(seed, num_classes, n_train, n_test, dim, spread):
    """Gaussian classes around random means: overlapping (spread ~1) to nearly separable (2)."""
    g = np.random.default_rng(seed)
    means = spread * g.normal(size=(num_classes, dim))
    y = g.integers(0, num_classes, n_train + n_test)
    x = means[y] + g.normal(size=(len(y), dim))
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def _sklearn_probe(x, y, num_classes, weight_decay):
    C = (2.0 if num_classes == 2 else 1.0) / (len(y) * weight_decay)
    return LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x, y)


def _sklearn_as_linear(sk, num_classes):
    """sklearn's fit as the probe's full softmax layer (W float[C, d], b float[C])."""
    W, b = torch.tensor(sk.coef_), torch.tensor(sk.intercept_)
    if num_classes == 2:  # v = W_1 - W_0 with the penalty-minimal split W_1 = -W_0 = v / 2
        W, b = torch.cat([-W / 2, W / 2]), torch.cat([-b / 2, b / 2])
    layer = torch.nn.Linear(W.shape[1], num_classes, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(W)
        layer.bias.copy_(b)
    return layer


def _centred(logits):
    return logits - logits.mean(dim=1, keepdim=True)  # softmax logits are defined up to a constant


@pytest.mark.parametrize("num_classes,weight_decay,spread", [(4, 1e-2, 1.0), (4, WEIGHT_DECAY, 1.0),
                                                             (2, WEIGHT_DECAY, 1.0), (6, WEIGHT_DECAY, 2.0)])
def test_linear_probe_is_sklearn_logistic_regression(num_classes, weight_decay, spread):
    xtr, ytr, xte, yte = _blobs(num_classes, num_classes, 200, 1000, 12, spread)
    x, y = torch.tensor(xtr), torch.tensor(ytr)
    probe = fit_linear_probe(x, y, num_classes, weight_decay=weight_decay)
    sk = _sklearn_probe(xtr, ytr, num_classes, weight_decay)
    ref = _sklearn_as_linear(sk, num_classes)
    assert sk.n_iter_.max() < 10_000  # sklearn converged
    with torch.no_grad():
        assert float(probe_objective(probe, x, y, weight_decay)) == pytest.approx(
            float(probe_objective(ref, x, y, weight_decay)), abs=1e-9)
        torch.testing.assert_close(probe.weight, ref.weight, atol=1e-3, rtol=0)
        test_x = torch.tensor(xte)
        ours_logits, sk_logits = probe(test_x), ref(test_x)
        torch.testing.assert_close(_centred(ours_logits), _centred(sk_logits), atol=1e-2, rtol=0)
        assert (ours_logits.argmax(1) == sk_logits.argmax(1)).double().mean() >= 0.995
        assert np.array_equal(sk_logits.argmax(1).numpy(), sk.predict(xte))  # the conversion is sklearn's model
    ours = 100.0 * float((ours_logits.argmax(1).numpy() == yte).mean())
    theirs = 100.0 * float(np.mean(sk.predict(xte) == yte))
    assert abs(ours - theirs) <= 1.0, (ours, theirs)
    assert ours > 100.0 / num_classes + 20  # a real signal, not chance


def test_linear_probe_accuracy_matches_sklearn_on_a_nearly_separable_problem():
    """linear_probe_accuracy (fit + top-1) at its defaults against sklearn's test accuracy."""
    xtr, ytr, xte, yte = _blobs(7, 5, 150, 1000, 12, 1.5)
    ours = linear_probe_accuracy(torch.tensor(xtr), torch.tensor(ytr), torch.tensor(xte), torch.tensor(yte), 5)
    theirs = 100.0 * float(np.mean(_sklearn_probe(xtr, ytr, 5, WEIGHT_DECAY).predict(xte) == yte))
    assert theirs > 85.0
    assert abs(ours - theirs) <= 1.0, (ours, theirs)


# ---------------------------------------------------------------- retrieval
def _pessimistic_hit(scores, positive_index, k):
    """sklearn's top-k hit of one query with the positive moved to index 0 (ranked last among ties)."""
    order = np.r_[positive_index, np.delete(np.arange(len(scores)), positive_index)]
    return top_k_accuracy_score([0], scores[order][None, :], k=k, labels=np.arange(len(scores)))


def sklearn_recalls(sim, text_image, ks=(1, 5, 10)):
    sim, text_image = np.asarray(sim, dtype=np.float64), np.asarray(text_image)
    n_img, n_txt = sim.shape
    out = {}
    for k in ks:
        # text -> image: one positive per caption; the candidates are the images
        t2i = [_pessimistic_hit(sim[:, t], text_image[t], k) for t in range(n_txt)]
        # image -> text: a positive caption p against the image's negatives only
        i2t = []
        for i in range(n_img):
            positives = np.flatnonzero(text_image == i)
            negatives = np.flatnonzero(text_image != i)
            i2t.append(any(_pessimistic_hit(np.r_[sim[i, p], sim[i, negatives]], 0, k) for p in positives))
        out[f"i2t_r{k}"] = 100.0 * np.mean(i2t)
        out[f"t2i_r{k}"] = 100.0 * np.mean(t2i)
    return out


def _similarity(seed, n_img, per_image, ties):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n_img, 8, generator=g), dim=1)
    text_image = torch.arange(n_img).repeat_interleave(per_image)[torch.randperm(n_img * per_image, generator=g)]
    txt = torch.nn.functional.normalize(img[text_image] + 0.8 * torch.randn(len(text_image), 8, generator=g), dim=1)
    sim = img @ txt.T
    if ties == "quantised":  # many exact ties
        sim = (sim * 3).round() / 3
    elif ties == "constant":  # every score tied: the pessimistic rule gives each query its worst rank
        sim = torch.zeros_like(sim)
    return sim, text_image


@pytest.mark.parametrize("ties", ["none", "quantised", "constant"])
@pytest.mark.parametrize("per_image", [1, 3])
def test_recall_at_k_is_sklearn_top_k_accuracy(rng_seed, ties, per_image):
    sim, text_image = _similarity(rng_seed, 12, per_image, ties)
    got = retrieval_recalls(sim, text_image)
    want = sklearn_recalls(sim.numpy(), text_image.numpy())
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key
    assert got["rsum"] == pytest.approx(sum(want.values()))


def test_without_ties_sklearn_agrees_in_the_original_order(rng_seed):
    """No ties: sklearn's plain top_k_accuracy_score on the similarity matrix, no reordering."""
    sim, text_image = _similarity(rng_seed, 12, 1, "none")
    got = retrieval_recalls(sim, text_image)
    s, t = sim.numpy().astype(np.float64), text_image.numpy()
    labels = np.arange(12)
    for k in (1, 5, 10):
        assert got[f"t2i_r{k}"] == pytest.approx(100.0 * top_k_accuracy_score(t, s.T, k=k, labels=labels))
        # one caption per image: image i's positive caption is the column where text_image == i
        caption_of = np.argsort(t)
        assert got[f"i2t_r{k}"] == pytest.approx(100.0 * top_k_accuracy_score(caption_of, s, k=k, labels=labels))
