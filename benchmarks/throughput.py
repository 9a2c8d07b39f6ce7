"""Training/evaluation throughput, side by side in one run, on the machine it runs on.

For each experiment's model at its input size:
  (a) floor      forward + backward + optimizer step on one batch already on the device
  (b) ours       common.train.train_one_epoch: uint8 data on the device, batched augmentation
  (c) report-style torchvision transforms on PIL images through a DataLoader (the report's pipeline)
  (d) eval       common.train.predict against an inference-only floor at the eval batch size
and, with --compile, (b) with torch.compile (compile time reported apart).
Rounds alternate a, b, c so that a busy machine slows all of them alike; medians are reported.

    python -m benchmarks.throughput              # EX-1..EX-4 on a GPU; EX-1 and EX-2 on a CPU (a few minutes)
    python -m benchmarks.throughput --quick      # EX-1 and EX-2, fewer steps (about a minute)
    python -m benchmarks.throughput --experiments ex_1 --compile
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from common import runlog  # noqa: E402
from common.augment import Preprocess, crop_flip, resize_like_pil, sample_crop_flip  # noqa: E402
from common.models import build_model  # noqa: E402
from common.devices import (amp_dtype, autocast, request_huge_pages, select_device,  # noqa: E402
                            use_channels_last)
from common.train import build_optimizer, predict, train_one_epoch  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def floor_steps(model, optimizer, x, y, steps, dtype, device):
    for _ in range(steps):
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def report_style_loader(images: np.ndarray, labels: np.ndarray, cfg, batch_size: int, workers: int):
    """What the report did: a Dataset of PIL images and a torchvision transform chain per image."""
    from PIL import Image
    from torchvision import transforms as T

    chain = []
    if cfg.image_size != 32:
        chain.append(T.Resize((cfg.image_size, cfg.image_size), antialias=True))
    if cfg.augment == "crop_flip":
        chain += [T.RandomCrop(cfg.image_size, padding=cfg.crop_padding()), T.RandomHorizontalFlip()]
    chain += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    transform = T.Compose(chain)
    hwc = images.transpose(0, 2, 3, 1)

    class PILDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):  # like torchvision.datasets.CIFAR10.__getitem__
            return transform(Image.fromarray(hwc[i])), int(labels[i])

    return torch.utils.data.DataLoader(PILDataset(), batch_size=batch_size, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)


def report_style_steps(model, optimizer, batches, steps, dtype, device):
    for _ in range(steps):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def bench_experiment(name: str, args, device) -> dict:
    cfg = importlib.import_module(name).CONFIG
    cfg = dataclasses.replace(cfg, pretrained=False)
    batch = cfg.batch_size
    dtype = amp_dtype(device, True)
    channels_last = use_channels_last(device, cfg.model)  # the floor uses the layout training uses
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(cfg, 10).to(device, memory_format=memory_format)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    # Steps per measurement: at least --steps, and at least --seconds of work at the floor's speed,
    # so that a fast model is not timed over a few milliseconds.
    g = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    x = Preprocess(cfg.image_size, cfg.mean, cfg.std, cfg.crop_padding(), device, channels_last)(probe)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    floor_steps(model, optimizer, x, y, 1, dtype, device)
    per_step = _timed(lambda: floor_steps(model, optimizer, x, y, 2, dtype, device), device) / 2
    steps = max(args.steps, int(args.seconds / per_step) + 1)
    n = batch * steps * 2
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    images_dev, labels_dev = images.to(device), labels.to(device)
    preprocess = Preprocess(cfg.image_size, cfg.mean, cfg.std, cfg.crop_padding(), device, channels_last,
                            augment=cfg.augment == "crop_flip")

    x = preprocess(images_dev[:batch])
    y = labels_dev[:batch]

    if not args.floors_only:
        loader = report_style_loader(images.numpy(), labels.numpy(), cfg, batch, args.workers)
        report_batches = iter(_forever(loader))
    subset = torch.arange(batch * steps)

    def ours():
        gen = torch.Generator().manual_seed(1)
        train_one_epoch(model, optimizer, images_dev, labels_dev, subset, preprocess=preprocess, batch_size=batch,
                        generator=gen, dtype=dtype, desc=f"bench {name}")

    # warm-up: allocator, cuDNN autotuning, worker start-up
    floor_steps(model, optimizer, x, y, 2, dtype, device)
    eval_floor, eval_batch, counted = eval_floor_fn(model, preprocess, images_dev, cfg, device, dtype)
    if args.floors_only:  # the two floors alone, for a run in other settings (see small_pages_floors)
        train_floor = [batch * steps / _timed(lambda: floor_steps(model, optimizer, x, y, steps, dtype, device), device)
                       for _ in range(args.rounds)]
        model.eval()
        eval_floor()
        return {"experiment": name, "floor": statistics.median(train_floor),
                "eval_floor": statistics.median([counted / _timed(eval_floor, device) for _ in range(args.rounds)])}
    report_style_steps(model, optimizer, report_batches, 2, dtype, device)
    rates = {"floor": [], "ours": [], "report_style": []}
    # Ratios are taken per round (neighbours in time) and their median reported: robust to a
    # machine whose speed drifts.
    ratios = {"ours_vs_floor": [], "ours_vs_report_style": [], "eval_vs_floor": []}
    measure = {
        "floor": lambda: floor_steps(model, optimizer, x, y, steps, dtype, device),
        "ours": ours,
        "report_style": lambda: report_style_steps(model, optimizer, report_batches, steps, dtype, device),
    }
    settle = int(0.5 / per_step) + 1  # ~0.5 s of floor steps: the CPU stays busy (no clock drop) while
    order = list(measure)              # the report-style workers finish prefetching
    for round_ in range(args.rounds):
        for pipeline in order[round_ % 3:] + order[:round_ % 3]:  # rotate: no pipeline always runs first
            floor_steps(model, optimizer, x, y, settle, dtype, device)
            rates[pipeline].append(batch * steps / _timed(measure[pipeline], device))
        ratios["ours_vs_floor"].append(rates["ours"][-1] / rates["floor"][-1])
        ratios["ours_vs_report_style"].append(rates["ours"][-1] / rates["report_style"][-1])

    # (d) evaluation: predict() on uint8 data vs the model alone on a preprocessed batch
    model.eval()

    def eval_ours():
        predict(model, images_dev[:counted], None, preprocess, eval_batch, dtype)

    def eval_preprocess_only():  # what predict adds to the floor, timed alone (see eval_preprocess_share)
        with torch.inference_mode():
            out = None
            for start in range(0, counted, eval_batch):
                out = preprocess(images_dev[start:start + eval_batch], out=out)

    eval_floor()
    eval_rates = {"eval_floor": [], "eval_ours": []}
    ratios["eval_preprocess_share"] = []
    for round_ in range(args.rounds):
        pair = [("eval_floor", eval_floor), ("eval_ours", eval_ours)]
        for key, fn in (pair if round_ % 2 == 0 else pair[::-1]):  # alternate: neither always runs first
            eval_rates[key].append(counted / _timed(fn, device))
        ratios["eval_vs_floor"].append(eval_rates["eval_ours"][-1] / eval_rates["eval_floor"][-1])
        # The preprocessing's time as a share of the floor's: a short measurement, so a burst of
        # machine noise moves it less than it moves the ratio of two long ones.
        ratios["eval_preprocess_share"].append(_timed(eval_preprocess_only, device) * eval_rates["eval_floor"][-1] / counted)
    rates.update(eval_rates)

    if device.type == "cpu":
        # The layout question on CPU: the floor in the other memory layout (see use_channels_last).
        model.train()
        other = torch.contiguous_format if channels_last else torch.channels_last
        model.to(memory_format=other)
        x_other = x.contiguous(memory_format=other)
        floor_steps(model, optimizer, x_other, y, 1, dtype, device)
        rates["floor_other_layout"] = [batch * steps / _timed(
            lambda: floor_steps(model, optimizer, x_other, y, steps, dtype, device), device)
            for _ in range(args.rounds)]
        model.to(memory_format=memory_format)

    if cfg.augment == "crop_flip":
        rates.update(bench_crop_flip(cfg, images_dev[:batch], args.rounds, device))

    result = {k: statistics.median(v) for k, v in rates.items()}
    result.update({"experiment": name, "model": cfg.model, "image_size": cfg.image_size, "batch_size": batch,
                   "steps_per_round": steps, "rounds": args.rounds, "report_style_workers": args.workers,
                   "eval_batch_size": eval_batch,
                   "layout": "channels_last" if channels_last else "contiguous"})
    result.update({k: statistics.median(v) for k, v in ratios.items()})
    result["per_round"] = {k: [round(r, 3) for r in v] for k, v in ratios.items()}  # the spread behind each median

    if args.compile:
        model.train()
        compiled = torch.compile(model)
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(2)
        train_one_epoch(compiled, optimizer, images_dev, labels_dev, torch.arange(batch * 2), preprocess=preprocess,
                        batch_size=batch, generator=gen, dtype=dtype, desc="compile")
        _sync(device)
        result["compile_time_s"] = time.perf_counter() - start
        compiled_rates, floor_again, compiled_ratio = [], [], []
        def run_compiled():
            gen = torch.Generator().manual_seed(3)
            train_one_epoch(compiled, optimizer, images_dev, labels_dev, subset, preprocess=preprocess,
                            batch_size=batch, generator=gen, dtype=dtype, desc="compiled")

        for round_ in range(args.rounds):
            pair = [("floor", measure["floor"]), ("compiled", run_compiled)]
            for pipeline, fn in (pair if round_ % 2 == 0 else pair[::-1]):
                floor_steps(model, optimizer, x, y, settle, dtype, device)
                (floor_again if pipeline == "floor" else compiled_rates).append(batch * steps / _timed(fn, device))
            compiled_ratio.append(compiled_rates[-1] / floor_again[-1])
        result["ours_compiled"] = statistics.median(compiled_rates)
        result["floor_during_compiled"] = statistics.median(floor_again)
        result["compiled_vs_floor"] = statistics.median(compiled_ratio)
        result["per_round"]["compiled_vs_floor"] = [round(r, 3) for r in compiled_ratio]
    return result


def eval_floor_fn(model, preprocess, images_dev, cfg, device, dtype):
    """The inference-only floor: the model alone on one preprocessed batch, as many batches as
    the evaluation of `images_dev` takes."""
    eval_batch = min(len(images_dev), cfg.eval_batch_size if device.type == "cuda" else min(cfg.eval_batch_size, 512))
    batches = len(images_dev) // eval_batch
    xe = preprocess(images_dev[:eval_batch])

    def eval_floor():
        with torch.inference_mode():
            for _ in range(batches):
                with autocast(device, dtype):
                    model(xe)
    return eval_floor, eval_batch, batches * eval_batch


def small_pages_floors(args) -> dict:
    """The CPU floors again in a child process with THP_MEM_ALLOC_ENABLE=0 (torch reads it once,
    at its first CPU allocation): what common.devices.request_huge_pages buys."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "floors.json")
        command = [sys.executable, "-m", "benchmarks.throughput", "--floors-only", "--device", "cpu",
                   "--experiments", *args.experiments, "--steps", str(args.steps), "--seconds", str(args.seconds),
                   "--rounds", str(args.rounds), "--out", out]
        subprocess.run(command, check=True, cwd=REPO_ROOT, env={**os.environ, "THP_MEM_ALLOC_ENABLE": "0"},
                       stdout=subprocess.DEVNULL)
        with open(out) as f:
            return {r["experiment"]: r for r in json.load(f)["results"]}


def bench_crop_flip(cfg, images, rounds, device) -> dict:
    """Random crop + flip alone, per image, at the training size: our uint8 gather against
    kornia.augmentation (float only), the well-kept library that does the same per image."""
    padding, g = cfg.crop_padding(), torch.Generator().manual_seed(4)
    resized = images if images.shape[-1] == cfg.image_size else resize_like_pil(images, cfg.image_size)
    size = resized.shape[0]
    ours = lambda: crop_flip(resized, padding, sample_crop_flip(size, padding, g))  # noqa: E731
    fns = {"crop_flip_ours": ours}
    try:
        import kornia.augmentation as K
    except ImportError:
        print("kornia is not installed: its crop/flip is not measured (pip install kornia)")
    else:
        floats = resized.float()
        kornia_aug = torch.nn.Sequential(K.RandomCrop((cfg.image_size, cfg.image_size), padding=padding, p=1.0),
                                         K.RandomHorizontalFlip(p=0.5))
        fns["crop_flip_kornia"] = lambda: kornia_aug(floats)
    reps = 20
    out = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name].append(size * reps / _timed(lambda: [fn() for _ in range(reps)], device))
    return out


def _forever(loader):
    while True:
        yield from loader


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiments", nargs="+", default=None, help="default: ex_1 ex_2 ex_3 ex_4 on a GPU, ex_1 ex_2 on a CPU or with --quick")
    p.add_argument("--steps", type=int, default=None, help="training steps per measurement (default 10, 4 with --quick)")
    p.add_argument("--seconds", type=float, default=None,
                   help="minimum seconds of work per measurement (default 1.5, 1 with --quick)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds, median reported (default 8, 2 with --quick)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers of the report-style pipeline")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="also measure our step with torch.compile")
    p.add_argument("--quick", action="store_true", help="about a minute on a 2-core CPU")
    p.add_argument("--floors-only", action="store_true", help=argparse.SUPPRESS)  # see small_pages_floors
    p.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/throughput-<device>-<time>.json)")
    args = p.parse_args(argv)
    request_huge_pages()  # as common.experiment.main does, before the first CPU tensor
    device = select_device(args.device)
    # EfficientNetV2-S trains at a few images/s on a laptop CPU: on CPU the default is EX-1 and EX-2.
    small = args.quick or device.type == "cpu"
    args.experiments = args.experiments or (["ex_1", "ex_2"] if small else ["ex_1", "ex_2", "ex_3", "ex_4"])
    args.steps = args.steps or (4 if args.quick else 10)
    # Many short rounds rather than a few long ones: on a machine whose speed jumps by 10-15%
    # from second to second, the median of 8 neighbour-in-time ratios is the steadier figure.
    args.rounds = args.rounds or (2 if args.quick else 8)
    args.seconds = args.seconds if args.seconds is not None else (1.0 if args.quick else 1.5)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    env = runlog.environment(device)
    env["cpu"] = platform.processor() or platform.machine()
    env["cpu_count"] = os.cpu_count()
    print(f"device: {device} ({env.get('gpu', env['cpu'])}), torch {torch.__version__}, threads {torch.get_num_threads()}")
    results = []
    for name in args.experiments:
        r = bench_experiment(name, args, device)
        results.append(r)
        if args.floors_only:
            continue
        print(f"{name}: floor {r['floor']:.0f} img/s, ours {r['ours']:.0f}, report-style {r['report_style']:.0f}, "
              f"eval {r['eval_ours']:.0f} vs {r['eval_floor']:.0f}", flush=True)
    if device.type == "cpu" and not args.floors_only:
        print("floors again with 4 KiB pages (THP_MEM_ALLOC_ENABLE=0), in a child process", flush=True)
        for r, floors in zip(results, small_pages_floors(args).values()):
            r["floor_small_pages"], r["eval_floor_small_pages"] = floors["floor"], floors["eval_floor"]
    print()
    print(markdown_table(results) if not args.floors_only else "floors only")
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                   f"throughput-{device.type}-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    runlog.write_json(out, {"environment": env, "command": runlog.command_line(), "args": vars(args), "results": results})
    print(f"\nwrote {out}")


def markdown_table(results: list) -> str:
    header = ("| experiment | size | (a) floor img/s | (b) ours img/s | (c) report-style img/s | b/a | b/c "
              "| (d) eval img/s | eval floor img/s | d/floor |")
    lines = [header, "|" + "|".join(["---"] * 10) + "|"]
    for r in results:
        lines.append(f"| {r['experiment']} | {r['image_size']} | {r['floor']:.0f} | {r['ours']:.0f} | "
                     f"{r['report_style']:.0f} | {r['ours_vs_floor']:.2f} | {r['ours_vs_report_style']:.2f} | "
                     f"{r['eval_ours']:.0f} | {r['eval_floor']:.0f} | {r['eval_vs_floor']:.2f} |")
    if any("floor_other_layout" in r for r in results):
        lines += ["", "CPU layout check, floor img/s in the layout used vs the other one: " + ", ".join(
            f"{r['experiment']} {r['layout']} {r['floor']:.0f} vs {r['floor_other_layout']:.0f}"
            for r in results if "floor_other_layout" in r)]
    if any("floor_small_pages" in r for r in results):
        lines += ["", "CPU page-size check, img/s with huge pages (as trained) vs 4 KiB pages: " + ", ".join(
            f"{r['experiment']} floor {r['floor']:.0f} vs {r['floor_small_pages']:.0f}, "
            f"eval floor {r['eval_floor']:.0f} vs {r['eval_floor_small_pages']:.0f}"
            for r in results if "floor_small_pages" in r)]
    shares = [r for r in results if "eval_preprocess_share" in r]  # (results of older versions lack it)
    if shares:
        lines += ["", "Evaluation preprocessing timed alone, as a share of the eval floor's time: " + ", ".join(
            f"{r['experiment']} {100 * r['eval_preprocess_share']:.1f}% "
            f"(expected d/floor {1 / (1 + r['eval_preprocess_share']):.3f})" for r in shares)]
    augmented = [r for r in results if "crop_flip_ours" in r]
    if augmented:
        lines += ["", "Random crop + flip alone, img/s: " + ", ".join(
            f"{r['experiment']} ({r['image_size']} px) ours {r['crop_flip_ours']:.0f}"
            + (f" vs kornia {r['crop_flip_kornia']:.0f} ({r['crop_flip_ours'] / r['crop_flip_kornia']:.1f}x)"
               if "crop_flip_kornia" in r else " (kornia not installed)") for r in augmented)]
    compiled = [r for r in results if "ours_compiled" in r]
    if compiled:
        lines += ["", "| experiment | compile time s | compiled ours img/s | eager floor img/s | compiled/floor |",
                  "|---|---|---|---|---|"]
        for r in compiled:
            lines.append(f"| {r['experiment']} | {r['compile_time_s']:.1f} | {r['ours_compiled']:.0f} | "
                         f"{r['floor_during_compiled']:.0f} | {r['compiled_vs_floor']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
