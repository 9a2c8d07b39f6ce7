"""PNG figures for a run folder and for compare, drawn from the same numbers the JSON files hold."""
from __future__ import annotations

import io
import os

# Files only, never a window: Agg on every machine, whatever MPLBACKEND says (an unknown
# value there would otherwise stop the import of matplotlib itself).
os.environ["MPLBACKEND"] = "Agg"
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.files import write_bytes  # noqa: E402


def save_figure(fig, path: str) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


def integer_epoch_axis(ax) -> None:
    """Epochs are whole numbers: no tick at 2.5."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(history: list, key: str, ylabel: str, title: str, path: str) -> None:
    """Train and validation `key` per epoch, with the best validation epoch marked."""
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(epochs, [h[f"train_{key}"] for h in history], marker=".", label="train")
    ax.plot(epochs, [h[f"val_{key}"] for h in history], marker=".", label="validation")
    best = max(history, key=lambda h: h["val_accuracy"])
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
    fig, ax = plt.subplots(figsize=(size * 1.15, size))
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
    """The `count` most confident mistakes: each image with its true and predicted label."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:count]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i].transpose(1, 2, 0))
        ax.set_title(f"true {class_names[labels[i]]}\npred {class_names[pred[i]]} {probs[i, pred[i]]:.2f}",
                     fontsize=7)
    if len(wrong) == 0:
        axes[0, 0].text(0, 0.5, "no misclassified test images", fontsize=10)
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
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
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


def plot_val_curves(series: dict, path: str) -> None:
    """Validation accuracy per epoch, a panel per dataset: each row's mean over seeds, shaded min..max
    in the line's colour. series: {dataset: [(label, per-seed curves)]}."""
    fig, axes = plt.subplots(1, max(1, len(series)), figsize=(6.4 * max(1, len(series)), 4.2), squeeze=False)
    for ax, (dataset, lines) in zip(axes[0], series.items()):
        for label, curves in lines:
            length = min(len(c) for c in curves)
            curves = np.array([c[:length] for c in curves])
            x = np.arange(1, length + 1)
            (line,) = ax.plot(x, curves.mean(0), marker=".", label=label)
            if len(curves) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2, color=line.get_color())
        ax.set_title(f"{dataset}: validation accuracy\nline: mean over seeds; band: lowest to highest seed",
                     fontsize="medium")
        integer_epoch_axis(ax)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: never over a curve
    save_figure(fig, path)


def plot_swept_field(name: str, groups: dict, path: str) -> None:
    """Best validation and test accuracy against one swept field's value, mean with 95% CI error bars
    (none where n = 1), the two metrics side by side; a panel per context. Numbers are placed on
    their scale and joined; named values (augment none / crop_flip) are separate points in their
    stated order. groups: {context: [(value, row summary)]}."""
    from common.factorial import value_order

    fig, axes = plt.subplots(1, len(groups), figsize=(6.4 * len(groups), 4.2), squeeze=False)
    for ax, points in zip(axes[0], groups.values()):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in points)
        order = value_order(name, [v for v, _ in points]) if not numeric else sorted(v for v, _ in points)
        points = sorted(points, key=lambda p: order.index(p[0]))
        x = np.array([v for v, _ in points] if numeric else range(len(points)), dtype=float)
        log = numeric and min(x) > 0 and max(x) / min(x) >= 10
        for side, (metric, label) in zip((-1, 1), (("val_accuracy", "best validation accuracy"),
                                                   ("test_accuracy", "test accuracy"))):
            shift = x * 10 ** (0.02 * side) if log else x + (0.06 * side * (np.ptp(x) or 1) if numeric else 0.1 * side)
            means = np.array([s[metric]["mean"] for _, s in points])
            lows = np.array([s[metric]["ci95"][0] if s[metric]["ci95"][0] is not None else s[metric]["mean"]
                             for _, s in points])
            highs = np.array([s[metric]["ci95"][1] if s[metric]["ci95"][1] is not None else s[metric]["mean"]
                              for _, s in points])
            ax.errorbar(shift, means, yerr=[means - lows, highs - means], marker="o", capsize=4, label=label,
                        linestyle="-" if numeric else "none")
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()  # only the swept values are labelled
        ax.set_xticks(x, [f"{v:g}" if numeric else str(v) for v, _ in points])
        if not numeric:
            ax.set_xlim(-0.5, len(points) - 0.5)
        first = points[0][1]
        ax.set_title(f"{first['dataset']}, {first['experiment']}: {name} (n = "
                     f"{'/'.join(str(s['n']) for _, s in points)}; bars: 95% CI)")
        ax.set_xlabel(name)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)


def plot_effects(data: dict, path: str) -> None:
    """A factorial design: left, each term's effect on test and best-validation accuracy with its 95%
    CI (zero marked); right, the interaction with the largest test effect as cell means. data: see
    common.compare.effects_figure_data."""
    pair = data["pair"]
    fig, axes = plt.subplots(1, 2 if pair else 1, figsize=(13 if pair else 7, 0.45 * len(data["terms"]) + 2.2),
                             squeeze=False, gridspec_kw={"width_ratios": [1.6, 1]} if pair else None)
    ax = axes[0][0]
    y = np.arange(len(data["terms"]))[::-1]
    for side, (metric, label) in zip((0.15, -0.15), data["labels"].items()):
        effects = [by_metric[metric] for _, by_metric in data["terms"]]
        ax.errorbar([e.estimate for e in effects], y + side,
                    xerr=[[e.estimate - e.low for e in effects], [e.high - e.estimate for e in effects]],
                    marker="o", linestyle="none", capsize=3, label=f"{label} (95% CI)")
    ax.axvline(0, color="grey", linewidth=1)
    names = [" × ".join(term) if len(term) > 1 else
             f"{term[0]}: {data['levels'][term[0]][0]} → {data['levels'][term[0]][1]}" for term, _ in data["terms"]]
    ax.set_yticks(y, names, fontsize="small")
    ax.set_xlabel("effect on accuracy (second value minus first, averaged over the other fields)")
    ax.set_title(f"{data['title']}: effects", fontsize="medium")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize="small")
    if pair:
        ax = axes[0][1]
        first, second = pair
        for b in data["levels"][second]:
            means = [data["cells"][key] for key in data["cells"] if key[1] == b]
            ax.plot(range(len(means)), means, marker="o", label=f"{second} {b}")
        ax.set_xticks(range(2), data["levels"][first])
        ax.set_xlim(-0.3, 1.3)
        ax.set_xlabel(first)
        ax.set_ylabel("mean test accuracy")
        ax.set_title(f"largest interaction: {first} × {second}", fontsize="medium")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    save_figure(fig, path)

