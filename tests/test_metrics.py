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


def test_hard_label_auc_is_sklearns_auc_of_one_hot_predictions_and_recall_plus_specificity():
    from common.metrics import hard_label_auc
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(2)
    k, n = 5, 600
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    cm = confusion_matrix(y, pred, labels=range(k))
    ours = hard_label_auc(cm)
    assert ours == pytest.approx(roc_auc_score(y, np.eye(k)[pred], multi_class="ovr", average="macro"), abs=1e-12)
    by_hand = []
    for c in range(k):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        tn = n - tp - fn - fp
        by_hand.append((tp / (tp + fn) + tn / (tn + fp)) / 2)
    assert ours == pytest.approx(np.mean(by_hand), abs=1e-12)
    m = classification_metrics(torch.tensor(np.eye(k)[pred] * 3.0, dtype=torch.float32), torch.tensor(y), list("abcde"))
    assert m["auc_hard_labels"] == pytest.approx(ours)


@pytest.mark.parametrize("accuracy,classes,report_auc", [(0.7224, 10, 0.8458), (0.3465, 100, 0.6699)])
def test_hard_label_auc_gives_the_reports_figures_from_its_accuracies(accuracy, classes, report_auc):
    """On a balanced test set whose errors spread evenly, (recall + specificity) / 2 depends on the
    accuracy alone: (acc + 1 - (1 - acc) / (K - 1)) / 2; the report's AUCs follow from its accuracies."""
    from common.metrics import hard_label_auc

    per_class = 1000 if classes == 10 else 100  # CIFAR's test sets
    correct = accuracy * per_class  # fractional counts: the mean over many such test sets
    cm = np.zeros((classes, classes))
    for c in range(classes):
        cm[c, c] = correct
        others = [o for o in range(classes) if o != c]
        cm[c, others] = (per_class - correct) / (classes - 1)  # errors spread evenly (fractional counts)
    expected = (accuracy + 1 - (1 - accuracy) / (classes - 1)) / 2
    assert hard_label_auc(cm) == pytest.approx(expected, abs=1e-9)
    assert round(hard_label_auc(cm), 4) == report_auc
