import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from common.metrics import classification_metrics, expected_calibration_error


def test_metrics_match_sklearn_on_known_inputs():
    rng = np.random.default_rng(0)
    k, n = 4, 400
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.0  # a weak, imperfect classifier
    m = classification_metrics(torch.tensor(logits, dtype=torch.float32), torch.tensor(y), list("abcd"))
    probs = torch.softmax(torch.tensor(logits, dtype=torch.float32), 1).numpy()
    pred = probs.argmax(1)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["precision"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"), abs=1e-6)
    assert m["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(
        torch.tensor(logits, dtype=torch.float32), torch.tensor(y))), rel=1e-5)
    top5 = np.argsort(-logits, 1)[:, :4]  # k=4: top-5 covers every class
    assert m["top5_accuracy"] == pytest.approx((top5 == y[:, None]).any(1).mean()) == 1.0
    cm = np.array(m["confusion_matrix"])
    assert cm.sum() == n and np.trace(cm) == (pred == y).sum()
    assert sum(c["support"] for c in m["per_class"].values()) == n


def test_auc_uses_probabilities_not_hard_labels():
    # Same hard predictions, different confidence: a probability-based AUC must see the difference,
    # the seed's hard-label AUC cannot.
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    logits = rng.normal(0, 1, (300, 3))
    logits[np.arange(300), y] += 0.8
    sharp = torch.tensor(logits * 5, dtype=torch.float32)
    soft = torch.tensor(logits, dtype=torch.float32)
    names = ["a", "b", "c"]
    ours = classification_metrics(soft, torch.tensor(y), names)["auc"]
    hard = roc_auc_score(y, np.eye(3)[logits.argmax(1)], multi_class="ovr", average="macro")
    assert ours != pytest.approx(hard, abs=1e-3)
    assert ours > hard  # ranking by probability uses information that hard labels throw away
    # Scaling the logits keeps every hard prediction but changes the probabilities, hence the AUC.
    sharp_metrics = classification_metrics(sharp, torch.tensor(y), names)
    assert sharp_metrics["accuracy"] == classification_metrics(soft, torch.tensor(y), names)["accuracy"]
    assert sharp_metrics["auc"] != pytest.approx(ours, abs=1e-4)


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    probs = np.array([[0.5, 0.5]] * 4)
    assert expected_calibration_error(probs, np.array([0, 1, 0, 1])) == pytest.approx(0.0, abs=0.01)
    probs = np.array([[0.99, 0.01]] * 4)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.99)
