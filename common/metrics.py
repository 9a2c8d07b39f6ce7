"""Test metrics from logits: what test.json holds.

`auc` is macro one-vs-rest from predicted probabilities. The report fed hard (one-hot)
predicted labels to roc_auc_score, which measures something else: for each class the ROC
curve then has one corner (1 - specificity, recall), so its area is (recall + specificity) / 2;
that figure is kept as `auc_hard_labels`, to compare with the report's. Accuracies are
fractions in [0, 1].
"""
from __future__ import annotations

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: list) -> dict:
    # imported here, when a run is tested: a process that stops before (a refused input, a stop
    # mid-training, a plan's launcher) need not pay sklearn's 1.2 s import
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    logits = logits.float().cpu()
    y = labels.cpu().numpy()
    k = len(class_names)
    probs = torch.softmax(logits, dim=1).numpy().astype(np.float64)
    pred = probs.argmax(1)
    loss = float(torch.nn.functional.cross_entropy(logits, labels.cpu()))
    top5 = torch.topk(logits, min(5, k), dim=1).indices.numpy()
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, labels=range(k), average="macro",
                                                               zero_division=0)
    p_c, r_c, f_c, s_c = precision_recall_fscore_support(y, pred, labels=range(k), average=None,
                                                         zero_division=0)
    confusion = confusion_matrix(y, pred, labels=range(k))  # rows: true, columns: predicted
    present = np.unique(y)
    if len(present) == k:
        auc = roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(k))
    else:  # a class without test images has no ROC curve
        auc = float("nan")
    return {
        "accuracy": float((pred == y).mean()),
        "loss": loss,
        "top5_accuracy": float((top5 == y[:, None]).any(1).mean()),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "auc": float(auc),
        "auc_hard_labels": hard_label_auc(confusion),
        "ece": expected_calibration_error(probs, y),
        "num_images": int(len(y)),
        # what the numbers above are, for a reader of test.json
        "averaging": "precision, recall, f1 and auc are macro means over classes (each class counts the same); "
                     "auc is one-vs-rest from probabilities, auc_hard_labels the report's (from the predicted labels)",
        "per_class": {name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                      for name, p, r, f, s in zip(class_names, p_c, r_c, f_c, s_c)},
        "confusion_matrix": confusion.tolist(),
        "confusion_matrix_axes": "rows: true class, columns: predicted class, both in the order of per_class",
    }


def hard_label_auc(confusion) -> float:
    """Macro mean over classes of (recall + specificity) / 2, from a confusion matrix (rows true):
    what roc_auc_score(y, one_hot(predicted), multi_class="ovr") gives. NaN if a class has no image."""
    counts = np.asarray(confusion, dtype=np.float64)
    total = counts.sum()
    true_pos = np.diag(counts)
    actual = counts.sum(1)
    predicted = counts.sum(0)
    negatives = total - actual
    if (actual == 0).any() or (negatives == 0).any():
        return float("nan")
    recall = true_pos / actual
    specificity = (negatives - (predicted - true_pos)) / negatives
    return float(np.mean((recall + specificity) / 2))


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> list:
    """Equal-width confidence bins (lo, hi]: one dict per non-empty bin with its image count,
    accuracy and mean confidence. Shared by the ECE and the reliability diagram."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            out.append({"lo": float(lo), "hi": float(hi), "count": int(in_bin.sum()),
                        "accuracy": float(correct[in_bin].mean()), "confidence": float(confidence[in_bin].mean())})
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    total = len(labels)
    return float(sum(b["count"] / total * abs(b["accuracy"] - b["confidence"])
                     for b in calibration_bins(probs, labels, bins)))
