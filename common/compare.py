"""Compare experiments from their run folders: a markdown table per dataset and a figure.

    python -m common.compare                 # your runs: every ex_N/ beside the scripts
    python -m common.compare ex_1 ex_2       # figure: ./compare_val_accuracy.png, beside the runs
    python common/compare.py ...             # the same, from any folder (REPO/common/compare.py)
    python -m common.compare results/ex_1 results/ex_4 \
        --readme README.md --figure images/compare_val_accuracy.png   # README's shipped table

Two runs share a row only when their whole recipe (RECIPE_FIELDS of the resolved config and
the number of processes), the data (test file's sha256) and the hardware (GPU name, or CPU
model) agree: only the seed may differ, and a repeated seed counts once. A row says how its
recipe differs from its script's own CONFIG (recorded in config.json), e.g. "3 of 50 epochs".
Each row shows the mean ± sample standard deviation over its seeds. Runs that did not
complete (running / interrupted / failed, no test.json) or whose JSON is damaged are listed
apart and never averaged. Nothing tracked by git is rewritten unless named (--readme, --figure).
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


# Fields of the resolved config that change what is trained: two runs share a row only when all
# of these, the data and the hardware agree (the seed is what a row averages over).
RECIPE_FIELDS = ("model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "scheduler", "warmup_epochs",
                 "image_size", "augment", "mean", "std", "pretrained", "weights", "val_fraction", "split_seed",
                 "amp", "compile", "smoke")


def read_run(run_dir: str) -> dict:
    """One run folder; `complete` only for a completed run whose JSON files have the expected shape."""
    def load(name):
        try:
            with open(os.path.join(run_dir, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    config, train, test = load("config.json"), load("train.json"), load("test.json")
    problem = _shape_problem(config, train, test)
    status = problem or train["status"]
    if status == "completed" and test is None:
        status = "no test.json"  # killed while testing
    complete = status == "completed"
    return {"dir": run_dir, "config": config, "train": train, "test": test, "status": status, "complete": complete}


def _shape_problem(config, train, test) -> str | None:
    """None if the files look as this repo writes them, else a short reason ('damaged: ...')."""
    if train is None:
        return "no train.json"
    if not isinstance(train, dict) or not isinstance(train.get("status"), str):
        return "damaged: train.json has no status"
    if train["status"] != "completed":
        return None  # listed apart by its status; its numbers are never read
    if not (isinstance(config, dict) and isinstance(config.get("config"), dict)
            and isinstance(config["config"].get("epochs"), int) and isinstance(config.get("seed"), int)):
        return "damaged: config.json is missing or not as written by this repo"
    epochs = train.get("epochs")
    if not (isinstance(epochs, list) and len(epochs) == config["config"]["epochs"]
            and all(isinstance(e, dict) and _is_number(e.get("val_accuracy")) for e in epochs)
            and all(_is_number(train.get(k)) for k in ("best_epoch", "train_time_s"))):
        return "damaged: train.json's epochs do not match its config"
    if test is not None and not (isinstance(test, dict) and all(_is_number(test.get(k)) for k in
                                                                ("accuracy", "f1", "test_time_s"))):
        return "damaged: test.json has no accuracy"
    return None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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


def _hardware_label(config: dict) -> str:
    """The GPU's name, or the CPU's model: times and last digits from different hardware never mix."""
    env = config.get("environment", {})
    if env.get("gpu"):
        return env["gpu"]
    if env.get("device", "cpu") != "cpu":
        return env.get("device", "unrecorded")
    return f"CPU {env['cpu']}" if env.get("cpu") else "CPU (model not recorded)"


def _experiment_label(run: dict) -> str:
    """EfficientNet runs without the ImageNet weights are a different experiment from the recipe."""
    cfg = run["config"]["config"]
    scratch = cfg.get("model", "").startswith("efficientnet") and cfg.get("pretrained") is False
    return run["experiment"] + (" from scratch" if scratch else "")


def _recipe_key(config: dict) -> tuple:
    cfg = config["config"]
    return tuple(json.dumps(cfg.get(field)) for field in RECIPE_FIELDS) + (config.get("processes", 1),)


def recipe_changes(config: dict) -> str:
    """How the run's recipe differs from its script's own CONFIG: '—' (none), or e.g. '3 of 50 epochs; lr 0.01'."""
    recipe, cfg = config.get("recipe"), config["config"]
    if recipe is None:  # runs made before config.json kept the script's recipe
        return f"{cfg.get('epochs')} epochs; recipe not recorded"
    changes = []
    for field in RECIPE_FIELDS:
        ours, theirs = cfg.get(field), recipe.get(field)
        if field == "smoke" or ours == theirs or (field == "pretrained" and cfg.get("smoke")):
            continue
        if field == "epochs":
            changes.append(f"{ours} of {theirs} epochs")
        elif field == "pretrained":
            changes.append("ImageNet weights" if ours else "no ImageNet weights")
        else:
            changes.append(f"{field.replace('_', ' ')} {_short(ours)}")
    if config.get("processes", 1) > 1:
        changes.append(f"{config['processes']} processes")
    return "; ".join(changes) or "—"


def _short(value) -> str:
    if isinstance(value, list):
        return "/".join(_short(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _mean_std(values: list, digits: int = 4) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def _group_key(run: dict) -> tuple:
    return (run["dataset"], _experiment_label(run), _recipe_key(run["config"]), _data_label(run["config"]),
            _hardware_label(run["config"]))


def groups_of_complete_runs(runs: list) -> dict:
    """{group key: runs}; a seed repeated within a group counts once (its newest folder)."""
    by_seed = defaultdict(dict)
    for run in runs:
        if run["complete"]:
            by_seed[_group_key(run)][run["config"]["seed"]] = run  # run folders come in time order
    return {key: [seeds[s] for s in sorted(seeds)] for key, seeds in sorted(by_seed.items())}


def summarize(runs: list) -> dict:
    """{dataset: [row dict]} for complete runs, one row per (experiment, recipe, data, hardware)."""
    table = defaultdict(list)
    for (dataset, experiment, _, data, hardware), members in groups_of_complete_runs(runs).items():
        acc = [r["test"]["accuracy"] for r in members]
        first = members[0]["config"]
        table[dataset].append({
            "experiment": experiment, "epochs": first["config"]["epochs"], "changes": recipe_changes(first),
            "data": data, "hardware": hardware, "runs": len(members),
            "seeds": [r["config"]["seed"] for r in members],
            "accuracy_mean": statistics.mean(acc), "accuracy_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
            "accuracy": _mean_std(acc),
            "f1": _mean_std([r["test"]["f1"] for r in members]),
            "auc": _mean_std([r["test"]["auc"] for r in members if _is_number(r["test"].get("auc"))]),
            "best_epoch": _mean_std([r["train"]["best_epoch"] for r in members], 1),
            "train_time_s": _mean_std([r["train"]["train_time_s"] for r in members], 1),
            "test_time_s": _mean_std([r["test"]["test_time_s"] for r in members], 2),
            "parameters": first.get("parameters"),
        })
    for rows in table.values():  # per experiment: the script's own recipe first, then longer runs first
        rows.sort(key=lambda r: (r["experiment"], r["changes"] != "—", -r["epochs"]))
    return table


def markdown(runs: list) -> str:
    table = summarize(runs)
    out = []
    for dataset in DATASET_FOLDERS.values():
        if dataset not in table:
            continue
        out += [f"**{dataset}**", "",
                "| experiment | changed from the script's recipe | data | hardware | runs (seeds) | test accuracy "
                "| macro F1 | AUC | best epoch | train time s | test time s | parameters |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in table[dataset]:
            seeds = ",".join(map(str, r["seeds"]))
            params = f"{r['parameters']:,}" if isinstance(r["parameters"], int) else "—"
            out.append(f"| {r['experiment']} | {r['changes']} | {r['data']} | {r['hardware']} | {r['runs']} ({seeds}) "
                       f"| {r['accuracy']} | {r['f1']} | {r['auc']} | {r['best_epoch']} | {r['train_time_s']} "
                       f"| {r['test_time_s']} | {params} |")
        out.append("")
    incomplete = [r for r in runs if not r["complete"]]
    if incomplete:
        out += ["Not averaged (incomplete, failed or damaged):", ""]
        out += [f"- {_display_path(r['dir'])}: {r['status']}" for r in incomplete]
        out.append("")
    if not table:
        out.append("No complete runs found.")
    return "\n".join(out).rstrip() + "\n"


def _display_path(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO_ROOT) if path.startswith(REPO_ROOT + os.sep) else path


def plot_val_accuracy(runs: list, path: str) -> None:
    """Validation accuracy per epoch: mean over seeds, shaded min..max in the line's colour, a panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from common.plots import integer_epoch_axis, save_figure

    groups = groups_of_complete_runs(runs)
    datasets = [d for d in DATASET_FOLDERS.values() if any(key[0] == d for key in groups)]
    fig, axes = plt.subplots(1, max(1, len(datasets)), figsize=(6.4 * max(1, len(datasets)), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        for (group_dataset, experiment, _, data, hardware), members in groups.items():
            if group_dataset != dataset:
                continue
            curves = np.array([[e["val_accuracy"] for e in r["train"]["epochs"]] for r in members])
            x = np.arange(1, curves.shape[1] + 1)
            changes = recipe_changes(members[0]["config"])
            label = (f"{experiment}{'' if changes == '—' else f' ({changes})'}, {data}, {hardware} "
                     f"({len(curves)} run{'s' * (len(curves) > 1)})")
            (line,) = ax.plot(x, curves.mean(0), marker=".", label=label)
            if len(curves) > 1:
                ax.fill_between(x, curves.min(0), curves.max(0), alpha=0.2, color=line.get_color())
        ax.set_title(f"{dataset}: validation accuracy")
        integer_epoch_axis(ax)
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


def is_tracked(path: str) -> bool:
    """Whether git tracks `path` (False outside a repository or without git)."""
    import subprocess

    folder = os.path.dirname(os.path.abspath(path))
    try:
        return subprocess.run(["git", "ls-files", "--error-unmatch", os.path.abspath(path)], cwd=folder,
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def default_experiment_dirs() -> list:
    """The user's own runs: every ex_N/ beside the scripts (the shipped ones are under results/)."""
    return sorted(d for d in glob.glob(os.path.join(REPO_ROOT, "ex_*"))
                  if os.path.isdir(d) and re.fullmatch(r"ex_\d+", os.path.basename(d)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="*",
                   help="experiment folders, each holding cifar_10/ and/or cifar_100/ "
                        "(default: your own runs, every ex_N/ beside the scripts)")
    p.add_argument("--figure", default=None,
                   help="where to write the validation-accuracy figure (default: compare_val_accuracy.png in the "
                        "folder that holds the compared experiments; a file tracked by git is only written "
                        "when named here)")
    p.add_argument("--json", default=None, help="also write the summary as JSON here")
    p.add_argument("--readme", default=None, help="replace the table between the compare markers in this file")
    args = p.parse_args(argv)
    dirs = args.experiments or default_experiment_dirs()
    if not dirs:
        p.error(f"no experiment folders given and no ex_N/ in {REPO_ROOT}: run an experiment first")
    missing = [d for d in dirs if not os.path.isdir(d)]
    if missing:
        p.error(f"no such experiment folder: {', '.join(missing)}")
    runs = collect(dirs)
    text = markdown(runs)
    print(text)
    if any(r["complete"] for r in runs):
        _write_figure(runs, args.figure, dirs)
    if args.json:
        from common.runlog import write_json
        write_json(args.json, {"summary": summarize(runs),
                               "incomplete": [{"dir": r["dir"], "status": r["status"]} for r in runs if not r["complete"]]})
    if args.readme:
        update_readme(args.readme, text)


def _write_figure(runs: list, figure: str | None, dirs: list) -> None:
    if figure is None:
        parent = os.path.commonpath([os.path.dirname(os.path.abspath(d)) for d in dirs])
        figure = os.path.join(parent, "compare_val_accuracy.png")
        if is_tracked(figure):  # a shipped figure changes only when asked by name
            print(f"figure not written: {figure} is tracked by git; pass --figure {figure} to rewrite it")
            return
    os.makedirs(os.path.dirname(os.path.abspath(figure)), exist_ok=True)
    plot_val_accuracy(runs, figure)
    print(f"figure: {figure}")


if __name__ == "__main__":
    sys.path.insert(0, REPO_ROOT)
    main()
