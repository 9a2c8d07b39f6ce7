"""Compare experiments from their run folders: a markdown table per dataset and a figure.

    python -m common.compare                       # every ex_N/ folder beside this repo's scripts
    python -m common.compare ex_1 ex_2 --figure images/compare_val_accuracy.png
    python -m common.compare ex_1 --readme README.md   # rewrite README's generated results table

Runs are grouped by (experiment, dataset, epochs, data, device; EfficientNet runs without
ImageNet weights apart as "from scratch"); each group shows the number of
runs and the mean ± sample standard deviation over them (seeds). Runs that did not complete
(status running / interrupted / failed, or no test.json) are listed apart and never averaged.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET_FOLDERS = {"cifar_10": "CIFAR-10", "cifar_100": "CIFAR-100"}
README_START, README_END = "<!-- compare:start -->", "<!-- compare:end -->"


def read_run(run_dir: str) -> dict:
    def load(name):
        try:
            with open(os.path.join(run_dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    config, train, test = load("config.json"), load("train.json"), load("test.json")
    status = (train or {}).get("status", "no train.json")
    complete = config is not None and status == "completed" and test is not None
    if status == "completed" and test is None:
        status = "no test.json"  # killed while testing
    return {"dir": run_dir, "config": config, "train": train, "test": test, "status": status, "complete": complete}


def collect(experiment_dirs: list) -> list:
    runs = []
    for exp_dir in experiment_dirs:
        for folder in DATASET_FOLDERS:
            for run_dir in sorted(glob.glob(os.path.join(exp_dir, folder, "*"))):
                if os.path.isdir(run_dir):
                    run = read_run(run_dir)
                    run["experiment"] = os.path.basename(os.path.normpath(exp_dir))
                    run["dataset"] = DATASET_FOLDERS[folder]
                    runs.append(run)
    return runs


def _data_label(config: dict) -> str:
    """'synthetic', or the first 8 hex digits of the test file's sha256: runs on different data never mix."""
    if config["config"].get("smoke"):
        return "synthetic"
    return "sha " + config["data"]["test_file_sha256"][:8] if "data" in config else "unrecorded"


def _device_label(config: dict) -> str:
    """The GPU's name, or 'CPU': train times (and last digits) from different hardware never mix."""
    env = config.get("environment", {})
    return env.get("gpu") or ("CPU" if env.get("device", "cpu") == "cpu" else env.get("device", "unrecorded"))


def _experiment_label(run: dict) -> str:
    """EfficientNet runs without the ImageNet weights are a different experiment from the recipe."""
    cfg = run["config"]["config"]
    scratch = cfg.get("model", "").startswith("efficientnet") and cfg.get("pretrained") is False
    return run["experiment"] + (" from scratch" if scratch else "")


def _mean_std(values: list, digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def summarize(runs: list) -> dict:
    """{dataset: [row dict]} for complete runs, grouped by (experiment, epochs, data, device)."""
    groups = defaultdict(list)
    for run in runs:
        if run["complete"]:
            key = (run["dataset"], _experiment_label(run), run["config"]["config"]["epochs"], _data_label(run["config"]),
                   _device_label(run["config"]))
            groups[key].append(run)
    table = defaultdict(list)
    for (dataset, experiment, epochs, data, device), members in sorted(groups.items()):
        acc = [r["test"]["accuracy"] for r in members]
        table[dataset].append({
            "experiment": experiment, "epochs": epochs, "data": data, "device": device, "runs": len(members),
            "seeds": sorted(r["config"]["seed"] for r in members),
            "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy": _mean_std(acc),
            "f1": _mean_std([r["test"]["f1"] for r in members]),
            "auc": _mean_std([r["test"]["auc"] for r in members if r["test"]["auc"] is not None]),
            "best_epoch": _mean_std([r["train"]["best_epoch"] for r in members], 1),
            "train_time_s": _mean_std([r["train"]["train_time_s"] for r in members], 1),
            "test_time_s": _mean_std([r["test"]["test_time_s"] for r in members], 2),
            "parameters": members[0]["config"]["parameters"],
        })
    return table


def markdown(runs: list) -> str:
    table = summarize(runs)
    out = []
    for dataset in DATASET_FOLDERS.values():
        if dataset not in table:
            continue
        out += [f"**{dataset}**", "",
                "| experiment | epochs | data | device | runs | test accuracy | macro F1 | AUC | best epoch "
                "| train time s | test time s | parameters |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in table[dataset]:
            out.append(f"| {r['experiment']} | {r['epochs']} | {r['data']} | {r['device']} | {r['runs']} | {r['accuracy']} | {r['f1']} "
                       f"| {r['auc']} | {r['best_epoch']} | {r['train_time_s']} | {r['test_time_s']} "
                       f"| {r['parameters']:,} |")
        out.append("")
    incomplete = [r for r in runs if not r["complete"]]
    if incomplete:
        out += ["Not averaged (incomplete or failed):", ""]
        out += [f"- {os.path.relpath(r['dir'], REPO_ROOT) if r['dir'].startswith(REPO_ROOT) else r['dir']}: "
                f"{r['status']}" for r in incomplete]
        out.append("")
    if not table:
        out.append("No complete runs found.")
    return "\n".join(out).rstrip() + "\n"


def plot_val_accuracy(runs: list, path: str) -> None:
    """Validation accuracy per epoch: mean over seeds, shaded min..max, one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common.plots import save_figure

    datasets = [d for d in DATASET_FOLDERS.values() if any(r["complete"] and r["dataset"] == d for r in runs)]
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6.4 * max(1, len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        groups = defaultdict(list)
        for r in runs:
            if r["complete"] and r["dataset"] == dataset:
                groups[(_experiment_label(r), r["config"]["config"]["epochs"], _device_label(r["config"]))].append(
                    [e["val_accuracy"] for e in r["train"]["epochs"]])
        for (experiment, epochs, device), curves in sorted(groups.items()):
            curves = np.array([c[:epochs] for c in curves])
            x = np.arange(1, curves.shape[1] + 1)
            runs_label = f"{len(curves)} run{'s' * (len(curves) > 1)}"
            ax.plot(x, curves.mean(0), marker=".", label=f"{experiment}, {epochs} epochs, {device} ({runs_label})")
            if len(curves) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2)
        ax.set_title(f"{dataset}: validation accuracy")
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.14))  # below: never over a curve
    save_figure(fig, path)


def update_readme(readme: str, text: str) -> None:
    from common.runlog import atomic_write_bytes

    content = open(readme).read()
    if README_START not in content or README_END not in content:
        raise SystemExit(f"error: {readme} has no {README_START} ... {README_END} markers")
    pattern = re.compile(re.escape(README_START) + ".*?" + re.escape(README_END), re.S)
    new = pattern.sub(lambda _: f"{README_START}\n{text}{README_END}", content)
    atomic_write_bytes(readme, lambda f: f.write(new.encode()))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*", help="experiment folders (default: every ex_N/ in the repo)")
    p.add_argument("--figure", default=os.path.join(REPO_ROOT, "images", "compare_val_accuracy.png"),
                   help="where to write the validation-accuracy figure (default: %(default)s)")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    p.add_argument("--readme", default=None, help="replace the table between the compare markers in this file")
    args = p.parse_args(argv)
    dirs = args.experiments or sorted(d for d in glob.glob(os.path.join(REPO_ROOT, "ex_*"))
                                      if os.path.isdir(d) and re.fullmatch(r"ex_\d+", os.path.basename(d)))
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        p.error(f"no such experiment folder: {', '.join(missing)}")
    runs = collect(dirs)
    text = markdown(runs)
    print(text)
    if any(r["complete"] for r in runs):
        os.makedirs(os.path.dirname(os.path.abspath(args.figure)), exist_ok=True)
        plot_val_accuracy(runs, args.figure)
        print(f"figure: {args.figure}")
    if args.json:
        from common.runlog import write_json
        write_json(args.json, {"summary": summarize(runs),
                               "incomplete": [{"dir": r["dir"], "status": r["status"]} for r in runs if not r["complete"]]})
    if args.readme:
        update_readme(args.readme, text)


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    main()
