"""PNG figures for a run folder and for compare, drawn from the same numbers the JSON files hold."""
from __future__ import annotations

import io
import os

import numpy as np

from common.files import write_bytes
from common.runfolder import best_epoch

# Files only, never a window: Agg on every machine, whatever MPLBACKEND says (an unknown
# value there would otherwise stop the import of matplotlib itself).
os.environ["MPLBACKEND"] = "Agg"


def pyplot():
    """matplotlib.pyplot, imported at the first figure: a process that stops before drawing
    (a refused input, --help) need not pay its 0.5 s."""
    import matplotlib.pyplot

    return matplotlib.pyplot


def save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    write_bytes(path, buffer.getvalue())


def integer_epoch_axis(ax) -> None:
    """Epochs are whole numbers: no tick at 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(history: list, key: str, ylabel: str, title: str, path: str) -> None:
    """Train and validation `key` per epoch, with the best validation epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [h[f"train_{key}"] for h in history], marker=".", label="train")
    ax.plot(epochs, [h[f"val_{key}"] for h in history], marker=".", label="validation")
    best = best_epoch(history)
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best val acc (epoch {best['epoch']})")
    integer_epoch_axis(ax)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def confusion_figure(matrix: list, class_names: list, title: str):
    """Row-normalised heatmap (recall per true class); counts annotated where they fit (<= 20 classes)."""
    import seaborn as sns

    counts = np.asarray(matrix)
    k = len(class_names)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 6 if k <= 20 else 18
    fig, ax = pyplot().subplots(figsize=(size * 1.15, size))
    sns.heatmap(rates, ax=ax, cmap="Blues", vmin=0, vmax=1, square=True,
                annot=counts if k <= 20 else False, fmt="d",
                xticklabels=class_names, yticklabels=class_names,
                cbar_kws={"label": "fraction of the true class", "shrink": 0.7})
    ax.tick_params(axis="both", labelsize=8 if k <= 20 else 5)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def plot_errors(images, labels, probs, class_names: list, title: str, path: str, count: int = 36) -> None:
    """The `count` most confident mistakes: each image (C x H x W) with its true and predicted label,
    tiled into one picture on one axes (36 axes with a title each took a second to draw, every run)."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:count]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    height, width = images.shape[2:]
    cell_h, cell_w = int(height * 1.4), int(width * 1.15)  # room above each image for its two label lines
    canvas = np.full((rows * cell_h, cols * cell_w, 3), 255 if images.dtype == np.uint8 else 1.0, images.dtype)
    fig, ax = pyplot().subplots(figsize=(cols * 1.9, cols * 1.9 * canvas.shape[0] / canvas.shape[1] + 0.4))
    fig.subplots_adjust(left=0, right=1, bottom=0, top=1 - 0.4 / fig.get_figheight())  # 0.4 in for the title
    for k, i in enumerate(wrong):
        top, left = (k // cols) * cell_h + cell_h - height, (k % cols) * cell_w
        canvas[top:top + height, left:left + width] = images[i].transpose(1, 2, 0)
        ax.text(left + width / 2, top - 1, f"true {class_names[labels[i]]}\npred {class_names[pred[i]]} "
                f"{probs[i, pred[i]]:.2f}", ha="center", va="bottom", fontsize=7)
    ax.imshow(canvas)
    ax.axis("off")
    if len(wrong) == 0:
        ax.text(0, cell_h / 2, "no misclassified test images", fontsize=10)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def plot_calibration(probs, labels, ece: float, title: str, path: str, bins: int = 15) -> None:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.

    Only bins that hold images are drawn (an empty bin has no accuracy), each labelled with its count.
    """
    from common.metrics import calibration_bins

    filled = calibration_bins(probs, labels, bins)
    centres = [(b["lo"] + b["hi"]) / 2 for b in filled]
    counts = [b["count"] for b in filled]
    fig, (ax, ax_count) = pyplot().subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(centres, [b["accuracy"] for b in filled], width=1 / bins, edgecolor="black", alpha=0.8,
           label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.4f})")
    ax.legend(loc="upper left")
    bars = ax_count.bar(centres, counts, width=1 / bins, color="grey")
    ax_count.bar_label(bars, labels=[str(c) for c in counts], fontsize=6)
    ax_count.set_xlabel("confidence (max softmax probability)")
    ax_count.set_ylabel("images")
    ax_count.margins(y=0.25)  # room for the count labels
    save_figure(fig, path)


def plot_test_set(paths: dict, data, probs, metrics: dict, tag: str, writer=None) -> None:
    """The confusion matrix, the most confident errors and the reliability diagram of the test set,
    to paths["confusion"], paths["errors"], paths["calibration"]."""
    labels = data.test_y.numpy()
    fig = confusion_figure(metrics["confusion_matrix"], data.classes,
                           f"{tag}: test confusion (acc {metrics['accuracy']:.4f})")
    if writer is not None:
        writer.add_figure("test/confusion_matrix", fig, close=False)
    save_figure(fig, paths["confusion"])
    plot_errors(data.test_x.numpy(), labels, probs, data.classes, f"{tag}: most confident test errors",
                paths["errors"])
    plot_calibration(probs, labels, metrics["ece"], f"{tag}: reliability", paths["calibration"])
