"""Wall time of one plan run with --jobs 1 and with --jobs N, side by side on this machine.

    python -m benchmarks.sweep_jobs                  # EX-1, CIFAR-10, lr x 2 seeds (4 members), 1 epoch, N = 2
    python -m benchmarks.sweep_jobs --epochs 2 --jobs 2 --rounds 2

The same 4-member plan (`--sweep lr=0.001,0.003 --seeds 0,1`) runs from scratch with each
--jobs value, in ABBA order (1, N, N, 1, ...) so that a machine whose speed drifts slows both
alike; each run is the whole command (start-up, data loading, training, testing, figures).
Needs the data in --data-dir (the JPEG copy of CIFAR-10: ../shared/data/make_cifar10.py).
Writes benchmarks/results/sweep-jobs-<time>.json with every timing and the median ratio.
"""
from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import REPO_ROOT, provenance, runfolder  # noqa: E402
from common.devices import cpu_model  # noqa: E402


def run_plan(jobs: int, args, out: str) -> float:
    command = [sys.executable, os.path.join(REPO_ROOT, "ex_1.py"), "--dataset", "cifar10", "--sweep",
               "lr=0.001,0.003", "--seeds", "0,1", "--epochs", str(args.epochs), "--jobs", str(jobs), "--name",
               f"jobs{jobs}", "--data-dir", args.data_dir, "--out", out, "--save-every", "0"]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"error: the plan with --jobs {jobs} failed: {result.stderr.strip()[-500:]}")
    print(f"--jobs {jobs}: {seconds:.1f} s", flush=True)
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2, help="the N compared with --jobs 1 (default 2)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per member (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="ABBA rounds: each --jobs value runs 2 x rounds times")
    p.add_argument("--data-dir", default=os.path.join(REPO_ROOT, "data"))
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/sweep-jobs-<time>.json)")
    args = p.parse_args(argv)
    times = {1: [], args.jobs: []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for n, jobs in enumerate((1, args.jobs, args.jobs, 1)):
                times[jobs].append(run_plan(jobs, args, os.path.join(tmp, f"r{round_}-{n}")))
    ratio = statistics.median(times[1]) / statistics.median(times[args.jobs])
    out = args.out or os.path.join(REPO_ROOT, "benchmarks", "results",
                                   f"sweep-jobs-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}.json")
    runfolder.write_json(out, {"command": provenance.command_line(), "time": provenance.now(),
                               "git": provenance.git_info(REPO_ROOT), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                               "plan": "ex_1, CIFAR-10, --sweep lr=0.001,0.003 --seeds 0,1 (4 members)",
                               "data_dir": os.path.abspath(args.data_dir), "epochs": args.epochs,
                               "seconds": {f"jobs_{k}": v for k, v in times.items()},
                               "median_jobs_1_over_jobs_n": ratio})
    print(f"median wall time, --jobs 1 / --jobs {args.jobs}: {ratio:.2f} (4 members, {args.epochs} epoch(s) each)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
