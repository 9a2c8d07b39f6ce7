"""Training speed in each precision x memory layout, side by side, through the real training loop.

For each model at its input size, four settings (fp32 and bf16 autocast, each in NCHW and
channels_last) train through common.train.train_one_epoch on uint8 data already on the device,
and evaluate through common.train.predict. Rounds rotate the settings' order, so that a busy
machine slows all of them alike; medians and per-round ratios to fp32 in the model's registered
fp32 layout (what `--precision fp32` trains in) are reported, and so is what `--precision
auto` picks here (common.devices.choose_numerics) and its speed-up. On a CPU without native bf16
(no avx512_bf16, no AMX) bf16 is emulated: the benchmark measures it anyway (it is the reason
`auto` keeps fp32 there), with fewer steps.

    python -m benchmarks.precision                      # EX-1, EX-2 at 32 and 128 px (minutes on 2 cores)
    python -m benchmarks.precision --quick              # fewer steps and rounds
    python -m benchmarks.precision --experiments ex_3   # EfficientNetV2-S at 32 px (slow on a CPU)
    python -m benchmarks.precision --experiments ex_4 --batches 1 --rounds 2   # at 128 px (EX-4, EX-5): slower

Output: a table on the console and benchmarks/results/precision-<cpu capability>-<time>.json,
with the CPU model, torch's capability string and whether it has native bf16.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # python benchmarks/precision.py

from benchmarks.throughput import _timed, script_recipe, write_results  # noqa: E402
from common import provenance  # noqa: E402
from common.augment import Preprocess  # noqa: E402
from common.devices import (DTYPES, LAYOUTS, Numerics, choose_numerics, memory_format, native_cpu_bf16,  # noqa: E402
                            request_huge_pages, select_device)
from common.models import MODELS, build_model  # noqa: E402
from common.optimizers import build_optimizer  # noqa: E402
from common.train import predict, train_one_epoch  # noqa: E402

SETTINGS = tuple((precision, layout) for precision in ("fp32", "bf16") for layout in LAYOUTS)
# case -> (script whose recipe it trains, image size in px; None: the recipe's own). EX-2's model at
# 32 px is the accuracy check's recipe (docs/performance.md); EX-4 is EfficientNetV2-S at 128 px
CASES = {"ex_1": ("ex_1", None), "ex_2_32px": ("ex_2", 32), "ex_2": ("ex_2", None), "ex_3": ("ex_3", None),
         "ex_4": ("ex_4", None)}


@dataclasses.dataclass
class Case:
    name: str
    recipe: object
    images: torch.Tensor   # uint8, on the device
    labels: torch.Tensor
    models: dict           # setting -> (model, optimizer, preprocess), each from the same initial weights


def make_case(name: str, device, batches: int) -> Case:
    experiment, size = CASES[name]
    recipe = script_recipe(experiment)
    recipe = dataclasses.replace(recipe, image_size=size or recipe.image_size)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (recipe.batch_size * batches, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (len(images),), generator=g)
    models = {}
    for precision, layout in SETTINGS:
        torch.manual_seed(0)
        model = build_model(recipe.model, 10, recipe.image_size, False)
        model = model.to(device, memory_format=memory_format(layout == "channels_last"))
        optimizer = build_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.weight_decay)
        preprocess = Preprocess(recipe.image_size, recipe.mean, recipe.std, device, layout == "channels_last",
                                recipe.augment)
        models[(precision, layout)] = (model, optimizer, preprocess)
    return Case(name, recipe, images.to(device), labels.to(device), models)


def train_rate(case: Case, setting, device, seed: int) -> float:
    """Images per second of the real train_one_epoch over every batch of the case."""
    model, optimizer, preprocess = case.models[setting]
    indices = torch.arange(len(case.images))
    seconds = _timed(lambda: train_one_epoch(
        model, optimizer, case.images, case.labels, indices, preprocess=preprocess,
        batch_size=case.recipe.batch_size, generator=torch.Generator().manual_seed(seed),
        dtype=DTYPES[setting[0]], desc=f"bench {case.name} {setting[0]} {setting[1]}"), device)
    return len(indices) / seconds


def eval_rate(case: Case, setting, device) -> float:
    model, _, preprocess = case.models[setting]
    model.eval()
    seconds = _timed(lambda: predict(model, case.images, None, preprocess, 512, DTYPES[setting[0]]), device)
    model.train()
    return len(case.images) / seconds


def bench_case(name: str, args, device) -> dict:
    emulated = device.type == "cpu" and not native_cpu_bf16()
    case = make_case(name, device, args.batches)
    for setting in SETTINGS:  # warm-up: oneDNN primitive creation, the allocator
        train_rate(case, setting, device, seed=99)
    rates = {s: [] for s in SETTINGS}
    evals = {s: [] for s in SETTINGS}
    for round_ in range(args.rounds):
        order = SETTINGS[round_ % 4:] + SETTINGS[:round_ % 4]  # rotate: no setting always runs first
        for setting in order:
            rates[setting].append(train_rate(case, setting, device, seed=round_))
            evals[setting].append(eval_rate(case, setting, device))
    entry = MODELS[case.recipe.model]
    today = ("fp32", entry.cpu_layout if device.type == "cpu" else "channels_last")
    auto = choose_numerics(device, "auto", entry.cpu_layout, entry.cpu_bf16_layout)
    ratios = {f"{p} {lay}": [r / t for r, t in zip(rates[(p, lay)], rates[today])] for p, lay in SETTINGS}
    return {"case": name, "model": case.recipe.model, "image_size": case.recipe.image_size,
            "batch_size": case.recipe.batch_size, "images_per_round": len(case.images), "rounds": args.rounds,
            "bf16_emulated": emulated, "fp32_default": f"{today[0]} {today[1]}",
            "auto": f"{auto.precision} {auto.layout}", "auto_reason": auto.reason,
            "train_images_per_s": {f"{p} {lay}": statistics.median(v) for (p, lay), v in rates.items()},
            "eval_images_per_s": {f"{p} {lay}": statistics.median(v) for (p, lay), v in evals.items()},
            "train_vs_fp32_default": {k: statistics.median(v) for k, v in ratios.items()},
            "per_round_vs_fp32_default": {k: [round(r, 3) for r in v] for k, v in ratios.items()},
            "auto_vs_fp32_default": statistics.median(ratios[f"{auto.precision} {auto.layout}"]),
            "best_bf16_vs_best_fp32": max(statistics.median(rates[("bf16", lay)]) for lay in LAYOUTS)
                                      / max(statistics.median(rates[("fp32", lay)]) for lay in LAYOUTS)}


def markdown_table(results: list) -> str:
    head = [f"{p} {lay}" for p, lay in SETTINGS]
    lines = ["| case | px | " + " | ".join(f"{h} img/s" for h in head) + " | auto picks | auto / fp32 default |"
             " best bf16 / best fp32 |", "|" + "---|" * (len(head) + 5)]
    for r in results:
        lines.append(f"| {r['case']} | {r['image_size']} | "
                     + " | ".join(f"{r['train_images_per_s'][h]:.0f}" for h in head)
                     + f" | {r['auto']} | {r['auto_vs_fp32_default']:.2f}x | {r['best_bf16_vs_best_fp32']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", choices=tuple(CASES), default=["ex_1", "ex_2_32px", "ex_2"])
    p.add_argument("--rounds", type=int, default=None, help="rotating rounds, median reported (default 5, 2 with --quick)")
    p.add_argument("--batches", type=int, default=None,
                   help="batches per measurement (default 8, 3 with --quick; 2 where bf16 is emulated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/precision-<capability>-<time>.json)")
    args = p.parse_args(argv)
    request_huge_pages()
    device = select_device(args.device)
    emulated = device.type == "cpu" and not native_cpu_bf16()
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.batches = args.batches or (2 if emulated else 3 if args.quick else 8)
    env = provenance.environment(device, Numerics("fp32", "nchw", "benchmark"))
    print(f"device: {device} ({env.get('gpu', env['cpu'])}), capability {env['cpu_capability']}, native bf16 "
          f"{env['native_cpu_bf16']}, torch {torch.__version__}, threads {torch.get_num_threads()}", flush=True)
    results = []
    for name in args.experiments:
        results.append(bench_case(name, args, device))
        print(markdown_table(results[-1:]).splitlines()[-1], flush=True)
    print("\n" + markdown_table(results))
    write_results(args.out, f"precision-{env['cpu_capability']}", env, args, results)


if __name__ == "__main__":
    main()
