"""Issue 37's measurements on a CPU with native bf16, in one resumable command: how much faster the
default `--precision auto` (bf16 there) trains than fp32, and what it costs in accuracy.

    python -m benchmarks.bf16_check --data-dir DIR    # DIR: JPEG copy of CIFAR-10 (make_cifar10.py DIR)
    python -m benchmarks.bf16_check --smoke --force   # the whole path in minutes on synthetic data, any CPU

1. Speed: benchmarks.precision for EX-1, EX-2's model at 32 and 128 px and EfficientNetV2-S (EX-3..5),
   each precision x layout through the real training loop, side by side; `auto / fp32 default` per case
   against the issue's targets (SPEED_TARGETS).
2. Accuracy: four plans, each recipe with 5 seeds in fp32 and in auto (ACCURACY_PLANS), under
   OUT/ex_N/sweeps/prec_fp32 and prec_auto; the same command again finishes them after any stop.
3. The bf16 - fp32 difference in test accuracy, per recipe, from compare (paired t over the seeds:
   a seed's two runs start from the same weights and see the same data order), and whether bf16
   costs accuracy beyond it.

It refuses on a CPU without native bf16 (there `auto` trains fp32: nothing to compare), unless
--force, which asks for bf16 by name (emulated: many times slower). Writes
benchmarks/results/bf16-check-<capability>-<time>.json; plans and run folders stay under OUT.
On a 2-core Intel Xeon with AMX it took 54 minutes (docs/performance.md): step 1 8 minutes, the
plans 46; --skip-speed leaves out step 1.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # python benchmarks/bf16_check.py

from benchmarks.throughput import write_results  # noqa: E402
from common import REPO_ROOT, provenance  # noqa: E402
from common.devices import Numerics, native_cpu_bf16, select_device  # noqa: E402

SPEED_TARGETS = {"ex_1": 1.8, "ex_2_32px": 1.5, "ex_2": 1.3, "ex_3": 1.0}  # auto / fp32 default, at least
ACCURACY_PLANS = {"ex_1": ["--epochs", "15"],  # the recipes issue 37 names, on the JPEG copy of CIFAR-10
                  "ex_2": ["--image-size", "32", "--epochs", "15", "--train-subset", "20000"]}
SEEDS = "0,1,2,3,4"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SMOKE = {"plans": ["--epochs", "2"], "seeds": "0,1", "speed": ["--experiments", "ex_1", "--rounds", "1", "--batches", "1"]}


def speed(args, out_json: str) -> dict:
    """benchmarks.precision's results, with each case's auto / fp32 default against its target."""
    cases = SMOKE["speed"] if args.smoke else ["--experiments", *SPEED_TARGETS]
    run([sys.executable, "-m", "benchmarks.precision", *cases, "--out", out_json])
    return speed_verdicts(json.load(open(out_json))["results"])


def speed_verdicts(results: list) -> dict:
    """{case: {"auto", "auto_vs_fp32_default", "emulated", "target", "met"}} from benchmarks.precision's results
    (met: None where bf16 was emulated, which says nothing of a native CPU's speed)."""
    return {r["case"]: {"auto": r["auto"], "auto_vs_fp32_default": r["auto_vs_fp32_default"], "emulated": r["bf16_emulated"],
                        "target": SPEED_TARGETS[r["case"]],
                        "met": None if r["bf16_emulated"] else r["auto_vs_fp32_default"] >= SPEED_TARGETS[r["case"]]}
            for r in results}


def plan_dirs(out: str, script: str) -> dict:
    return {side: os.path.join(out, script, "sweeps", f"prec_{side}") for side in ("fp32", "auto")}


def accuracy(args, bf16: str) -> dict:
    """Both plans per recipe (each finished if stopped before), then compare's bf16 - fp32 contrast."""
    found = {}
    for script in args.experiments:
        recipe = ACCURACY_PLANS[script]
        for side, precision in (("fp32", "fp32"), ("auto", bf16)):
            run([sys.executable, os.path.join(REPO_ROOT, f"{script}.py"), "--dataset", "cifar10",
                 *(SMOKE["plans"] if args.smoke else recipe), "--seeds", SMOKE["seeds"] if args.smoke else SEEDS,
                 "--precision", precision, "--name", f"prec_{side}", "--jobs", str(args.jobs), "--save-every", "0",
                 "--out", os.path.join(args.out, script), *data_flags(args)])
        found[script] = precision_contrast(list(plan_dirs(args.out, script).values()))
    return found


def data_flags(args) -> list:
    return (["--data-dir", args.data_dir] if args.data_dir else []) + (["--smoke"] if args.smoke else [])


def precision_contrast(folders: list) -> list:
    """compare's contrasts between the folders' tables that differ in precision only."""
    from common.compare.cli import main as compare_main

    with tempfile.TemporaryDirectory() as tmp:
        compare_main([*folders, "--no-figures", "--json", os.path.join(tmp, "compare.json")])
        contrasts = json.load(open(os.path.join(tmp, "compare.json")))["contrasts"]
    return [{"sides": c["sides"], "n": c["n"], "paired_seeds": c["paired_seeds"], "runs": c["runs"],
             "test_accuracy": c["test_accuracy"], "val_accuracy": c["val_accuracy"],
             "bf16_costs_accuracy": costs_accuracy(c)} for c in contrasts if c["part"] == "precision"]


def costs_accuracy(contrast: dict) -> bool | None:
    """Whether the bf16 side is below fp32 beyond the 95% CI (None: no interval)."""
    sign = 1 if contrast["sides"][0].startswith("bfloat16") else -1  # compare's order: first minus second
    low, high = contrast["test_accuracy"]["ci95"]
    return None if low is None else (high if sign == 1 else -low) < 0


def run(cmd: list) -> None:
    print("$", " ".join(cmd), flush=True)
    if subprocess.run(cmd, cwd=REPO_ROOT).returncode != 0:
        sys.exit(f"error: this step failed; run the same command again to finish what is left: {' '.join(cmd)}")


def report(found: dict) -> None:
    for case, v in found.get("speed", {}).items():
        verdict = "bf16 emulated: no measure of native speed" if v["emulated"] else "met" if v["met"] else "NOT met"
        print(f"speed {case}: auto ({v['auto']}) / fp32 default {v['auto_vs_fp32_default']:.2f}x, target "
              f"{v['target']:.1f}x: {verdict}")
    for script, contrasts in found["accuracy"].items():
        if not contrasts:
            print(f"accuracy {script}: auto trained in fp32 too here (its model's entry keeps fp32): nothing to compare")
        for c in contrasts:
            low, high = c["test_accuracy"]["ci95"]
            interval = "" if low is None else f" [{low:+.4f}, {high:+.4f}]"
            verdict = {True: "bf16 costs accuracy beyond the seeds' noise: its cpu_bf16_layout goes back to None",
                       False: "no cost distinguishable from the seeds' noise", None: "no interval"}
            print(f"accuracy {script}: test acc {c['sides'][0]} − {c['sides'][1]} "
                  f"{c['test_accuracy']['difference']:+.4f}{interval} over seeds {c['paired_seeds']} "
                  f"({c['test_accuracy']['test']}): {verdict[c['bf16_costs_accuracy']]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="the JPEG copy of CIFAR-10 (or the official archives), as the scripts take it")
    p.add_argument("--out", default=os.path.join(REPO_ROOT, "results"), help="where the plans go (default: results/)")
    p.add_argument("--jobs", type=int, default=2, help="plan members at once (default 2, as docs/performance.md)")
    p.add_argument("--experiments", nargs="+", choices=tuple(ACCURACY_PLANS), default=list(ACCURACY_PLANS),
                   help="whose accuracy plans to run (default: all)")
    p.add_argument("--skip-speed", action="store_true", help="leave out step 1, the speed benchmark")
    p.add_argument("--smoke", action="store_true", help="synthetic data, 2 epochs, 2 seeds: checks the path only")
    p.add_argument("--force", action="store_true", help="on a CPU without native bf16: bf16 by name, emulated")
    p.add_argument("--json", default=None, help="the result file (default: benchmarks/results/bf16-check-*.json)")
    args = p.parse_args(argv)
    native = native_cpu_bf16()
    if not native and not args.force:
        sys.exit("error: this CPU has no native bf16 (torch.cpu._is_avx512_bf16_supported() and AMX: False), so "
                 "--precision auto trains fp32 here and there is nothing to measure; --force runs bf16 emulated")
    env = provenance.environment(select_device("cpu"), Numerics("fp32", "nchw", "benchmark"))
    stamp = f"{env['cpu_capability']}-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}"
    out_json = args.json or os.path.join(RESULTS, f"bf16-check-{stamp}.json")
    found = {}
    if not args.skip_speed:  # its own file beside this one's, as every benchmarks.precision run writes
        found["speed"] = speed(args, os.path.join(os.path.dirname(os.path.abspath(out_json)), f"precision-{stamp}.json"))
    found["accuracy"] = accuracy(args, "auto" if native else "bf16")
    report(found)
    write_results(out_json, "bf16-check", env, args, [found])


if __name__ == "__main__":
    main()
