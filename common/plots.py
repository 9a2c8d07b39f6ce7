"""PNG figures for a run folder, drawn from the same numbers that the JSON files hold."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.runlog import atomic_write_bytes  # noqa: E402


def save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue()))


def plot_curves(history: list, key: str, ylabel: str, title: str, path: str) -> None:
    """Train and validation `key` per epoch, with the best validation epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [h[f"train_{key}"] for h in history], marker=".", label="train")
    ax.plot(epochs, [h[f"val_{key}"] for h in history], marker=".", label="validation")
    best = max(history, key=lambda h: h["val_accuracy"])
    ax.axvline(best["epoch"], color="grey", linestyle=":", label=f"best val acc (epoch {best['epoch']})")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def plot_confusion_matrix(matrix: list, class_names: list, title: str, path: str) -> None:
    """Row-normalised heatmap (recall per true class); counts annotated where they fit (<= 20 classes)."""
    import seaborn as sns

    counts = np.asarray(matrix)
    k = len(class_names)
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    size = 6 if k <= 20 else 18
    fig, ax = plt.subplots(figsize=(size * 1.15, size))
    sns.heatmap(rates, ax=ax, cmap="Blues", vmin=0, vmax=1, square=True,
                annot=counts if k <= 20 else False, fmt="d",
                xticklabels=class_names, yticklabels=class_names,
                cbar_kws={"label": "fraction of the true class", "shrink": 0.7})
    fontsize = 8 if k <= 20 else 5
    ax.tick_params(axis="both", labelsize=fontsize)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    save_figure(fig, path)
