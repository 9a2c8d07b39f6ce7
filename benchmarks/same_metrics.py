"""Same numbers before and after a change: every ex_N.py --smoke (both datasets) in two checkouts.

    python -m benchmarks.same_metrics --before 3ad361f            # that commit vs this working tree
    python -m benchmarks.same_metrics --before A --after B

Each checkout runs the five scripts' --smoke on one shared synthetic data folder, one after
the other on this machine with the same thread count, in fp32 (`--precision fp32` where the
script has it); the test metrics (test.json's accuracy,
loss, macro F1, AUC) are compared bit for bit. The result goes to
benchmarks/results/same-metrics-<before>-<after>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import REPO_ROOT, provenance, runfolder  # noqa: E402
from common.devices import Numerics, select_device  # noqa: E402

SCRIPTS = ("ex_1", "ex_2", "ex_3", "ex_4", "ex_5")
METRICS = ("accuracy", "loss", "f1", "auc")


def fp32_args(checkout: str, script: str) -> list:
    """`--precision fp32` where the checkout's script takes it: on a CPU with native bf16 its default
    trains EX-1 and EX-2 in bf16, while every run before the flag existed trained fp32."""
    usage = subprocess.run([sys.executable, os.path.join(checkout, f"{script}.py"), "--help"], cwd=checkout,
                           capture_output=True, text=True).stdout
    return ["--precision", "fp32"] if "--precision" in usage else []


def smoke_metrics(checkout: str, data: str, out: str) -> dict:
    """{"ex_N/cifar_10": {metric: value}} from `python ex_N.py --smoke` (fp32) in `checkout`."""
    found = {}
    for script in SCRIPTS:
        result = subprocess.run([sys.executable, os.path.join(checkout, f"{script}.py"), "--smoke", "--data-dir", data,
                                 "--out", os.path.join(out, script), *fp32_args(checkout, script)],
                                cwd=checkout, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"error: {script}.py --smoke failed in {checkout}: {result.stderr.strip()[-500:]}")
        for folder in ("cifar_10", "cifar_100"):
            (stamp,) = os.listdir(os.path.join(out, script, folder))
            with open(os.path.join(out, script, folder, stamp, "test.json")) as f:
                test = json.load(f)
            found[f"{script}/{folder}"] = {k: test[k] for k in METRICS}
        print(f"{checkout}: {script} done", flush=True)
    return found


def checkout_of(commit: str | None, tmp: str) -> str:
    """The working tree for None, else a detached worktree of `commit` under tmp."""
    if commit is None:
        return REPO_ROOT
    path = os.path.join(tmp, commit)
    subprocess.run(["git", "worktree", "add", "--detach", path, commit], cwd=REPO_ROOT, check=True,
                   capture_output=True)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="a commit")
    p.add_argument("--after", default=None, help="a commit (default: this working tree)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {"before": checkout_of(args.before, tmp), "after": checkout_of(args.after, tmp)}
        try:
            data = os.path.join(tmp, "data")
            metrics = {side: smoke_metrics(path, data, os.path.join(tmp, f"out-{side}"))
                       for side, path in checkouts.items()}
        finally:
            for side, path in checkouts.items():
                if path != REPO_ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO_ROOT, capture_output=True)
    same = {key: metrics["before"][key] == metrics["after"].get(key) for key in metrics["before"]}
    after_name = args.after or (provenance.git_info(REPO_ROOT)["commit"] or "worktree")[:7]
    out = os.path.join(REPO_ROOT, "benchmarks", "results", f"same-metrics-{args.before[:7]}-{after_name[:7]}.json")
    machine = provenance.environment(select_device("cpu"), Numerics("fp32", "nchw", "benchmark"))
    runfolder.write_json(out, {"command": provenance.command_line(), "time": provenance.now(), "environment": machine,
                               "before": args.before, "after": args.after or provenance.git_info(REPO_ROOT),
                               "all_identical": all(same.values()), "identical": same, "metrics": metrics})
    for key, ok in same.items():
        print(f"{key}: {'identical' if ok else 'DIFFERENT'} {metrics['before'][key]} vs {metrics['after'].get(key)}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
