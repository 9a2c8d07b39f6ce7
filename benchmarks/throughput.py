"""Training/evaluation throughput, side by side in one run, on the machine it runs on.

For each experiment's model at its input size:
  (a) floor      forward + backward + optimizer step on one batch already on the device
  (b) ours       common.train.train_one_epoch: uint8 data on the device, batched augmentation
  (c) report-style torchvision transforms on PIL images through a DataLoader (the report's pipeline)
  (d) eval       common.train.predict against an inference-only floor at the eval batch size
and, with --compile, (b) with torch.compile (compile time reported apart). On a CPU in fp32;
each precision x layout is benchmarks/precision.py's.
Rounds alternate a, b, c so that a busy machine slows all of them alike; medians are reported.

    python -m benchmarks.throughput              # EX-1..EX-4 on a GPU; EX-1 and EX-2 on a CPU (a few minutes)
    python -m benchmarks.throughput --quick      # EX-1 and EX-2, fewer steps (about a minute)
    python -m benchmarks.throughput --experiments ex_1 --compile
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # python benchmarks/throughput.py

from common import REPO_ROOT, provenance, runfolder  # noqa: E402
from common.augment import Preprocess, crop_flip, crop_padding, resize_like_pil, sample_crop_flip  # noqa: E402
from common.config import Options, Recipe, from_dict  # noqa: E402
from common.devices import (Numerics, autocast, choose_numerics, memory_format, request_huge_pages,  # noqa: E402
                            select_device)
from common.models import MODELS, build_model  # noqa: E402
from common.optimizers import build_optimizer  # noqa: E402
from common.train import predict, train_one_epoch  # noqa: E402


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


def report_style_loader(images: np.ndarray, labels: np.ndarray, recipe, batch_size: int, workers: int):
    """What the report did: a Dataset of PIL images and a torchvision transform chain per image."""
    from PIL import Image
    from torchvision import transforms as T

    chain = []
    if recipe.image_size != 32:
        chain.append(T.Resize((recipe.image_size, recipe.image_size), antialias=True))
    if recipe.augment != "none":  # the report's crop + flip (the benchmark's recipes use no other policy)
        chain += [T.RandomCrop(recipe.image_size, padding=crop_padding(recipe.image_size)), T.RandomHorizontalFlip()]
    chain += [T.ToTensor(), T.Normalize(recipe.mean, recipe.std)]
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


def script_recipe(name: str) -> Recipe:
    """The experiment's recipe as its script resolves it (`python ex_N.py --dry-run`): nothing imported from it."""
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, f"{name}.py"), "--dry-run", "--dataset",
                             "cifar10"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        sys.exit(f"error: {name}.py --dry-run failed: {result.stderr.strip()[-300:]}")
    recipe, _ = from_dict(Recipe, json.loads(result.stdout)["recipe"], f"{name}.py --dry-run")
    return dataclasses.replace(recipe, pretrained=False)  # no ImageNet weights needed to time a step


@dataclasses.dataclass
class Bench:
    """One experiment's model, optimizer, data on the device and a preprocessed batch: what every timing shares."""
    name: str
    recipe: Recipe
    device: torch.device
    dtype: object
    channels_last: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    images: torch.Tensor       # uint8 on the CPU
    labels: torch.Tensor
    images_dev: torch.Tensor
    labels_dev: torch.Tensor
    preprocess: Preprocess
    x: torch.Tensor            # one preprocessed batch on the device
    y: torch.Tensor
    steps: int                 # per measurement
    per_step: float            # s, the floor's, measured once

    def floor(self, steps: int | None = None) -> None:
        floor_steps(self.model, self.optimizer, self.x, self.y, steps or self.steps, self.dtype, self.device)

    def images_per_s(self, fn) -> float:
        return self.recipe.batch_size * self.steps / _timed(fn, self.device)


def make_bench(name: str, args, device) -> Bench:
    recipe = script_recipe(name)
    batch = recipe.batch_size
    entry = MODELS[recipe.model]
    numerics = choose_numerics(device, "fp32" if device.type == "cpu" else "auto", entry.cpu_layout, None)
    channels_last = numerics.channels_last  # the fp32 layout training uses on a CPU (bf16: benchmarks/precision.py)
    torch.manual_seed(0)
    model = build_model(recipe.model, 10, recipe.image_size, False).to(device, memory_format=memory_format(channels_last))
    optimizer = build_optimizer(recipe.optimizer, model.parameters(), recipe.lr, recipe.weight_decay)
    g = torch.Generator().manual_seed(0)
    plain = Preprocess(recipe.image_size, recipe.mean, recipe.std, device, channels_last)
    probe = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)
    x, y = plain(probe), torch.randint(0, 10, (batch,), generator=g).to(device)
    dtype = numerics.dtype
    floor_steps(model, optimizer, x, y, 1, dtype, device)
    per_step = _timed(lambda: floor_steps(model, optimizer, x, y, 2, dtype, device), device) / 2
    # Steps per measurement: at least --steps, and at least --seconds of work at the floor's speed,
    # so that a fast model is not timed over a few milliseconds.
    steps = max(args.steps, int(args.seconds / per_step) + 1)
    images = torch.randint(0, 256, (batch * steps * 2, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (len(images),), generator=g)
    images_dev, labels_dev = images.to(device), labels.to(device)
    preprocess = Preprocess(recipe.image_size, recipe.mean, recipe.std, device, channels_last, recipe.augment)
    return Bench(name, recipe, device, dtype, channels_last, model, optimizer, images, labels, images_dev, labels_dev,
                 preprocess, preprocess(images_dev[:batch]), labels_dev[:batch], steps, per_step)


def train_ours(b: Bench, model=None, seed: int = 1, images: int | None = None) -> None:
    """The real train_one_epoch over steps batches (or `images` images)."""
    train_one_epoch(model or b.model, b.optimizer, b.images_dev, b.labels_dev,
                    torch.arange(images or b.recipe.batch_size * b.steps), preprocess=b.preprocess,
                    batch_size=b.recipe.batch_size, generator=torch.Generator().manual_seed(seed), dtype=b.dtype,
                    desc=f"bench {b.name}")


def measure_training(b: Bench, args) -> tuple:
    """(a) floor, (b) ours, (c) report-style, in rounds whose order rotates; per-round ratios."""
    loader = report_style_loader(b.images.numpy(), b.labels.numpy(), b.recipe, b.recipe.batch_size, args.workers)
    report_batches = iter(_forever(loader))
    report_style_steps(b.model, b.optimizer, report_batches, 2, b.dtype, b.device)  # worker start-up
    measure = {"floor": b.floor, "ours": lambda: train_ours(b),
               "report_style": lambda: report_style_steps(b.model, b.optimizer, report_batches, b.steps, b.dtype,
                                                          b.device)}
    rates = {k: [] for k in measure}
    ratios = {"ours_vs_floor": [], "ours_vs_report_style": []}
    settle = int(0.5 / b.per_step) + 1  # ~0.5 s of floor steps: the CPU stays busy (no clock drop) while
    order = list(measure)                # the report-style workers finish prefetching
    for round_ in range(args.rounds):
        for pipeline in order[round_ % 3:] + order[:round_ % 3]:  # rotate: no pipeline always runs first
            b.floor(settle)
            rates[pipeline].append(b.images_per_s(measure[pipeline]))
        ratios["ours_vs_floor"].append(rates["ours"][-1] / rates["floor"][-1])
        ratios["ours_vs_report_style"].append(rates["ours"][-1] / rates["report_style"][-1])
    return rates, ratios


def measure_evaluation(b: Bench, args) -> tuple:
    """(d) predict() on uint8 data against the model alone on a preprocessed batch; and the
    preprocessing's time alone, as a share of the floor's."""
    b.model.eval()
    eval_floor, eval_batch, counted = eval_floor_fn(b.model, b.preprocess, b.images_dev, b.recipe, b.device, b.dtype)

    def eval_ours():
        predict(b.model, b.images_dev[:counted], None, b.preprocess, eval_batch, b.dtype)

    def eval_preprocess_only():
        with torch.inference_mode():
            out = None
            for start in range(0, counted, eval_batch):
                out = b.preprocess(b.images_dev[start:start + eval_batch], out=out)

    eval_floor()
    rates, ratios = {"eval_floor": [], "eval_ours": []}, {"eval_vs_floor": [], "eval_preprocess_share": []}
    for round_ in range(args.rounds):
        pair = [("eval_floor", eval_floor), ("eval_ours", eval_ours)]
        for key, fn in (pair if round_ % 2 == 0 else pair[::-1]):  # alternate: neither always runs first
            rates[key].append(counted / _timed(fn, b.device))
        ratios["eval_vs_floor"].append(rates["eval_ours"][-1] / rates["eval_floor"][-1])
        # A short measurement: a burst of machine noise moves it less than the ratio of two long ones.
        ratios["eval_preprocess_share"].append(_timed(eval_preprocess_only, b.device) * rates["eval_floor"][-1]
                                               / counted)
    b.model.train()
    return rates, ratios, eval_batch


def measure_other_layout(b: Bench, args) -> list:
    """The CPU floor in the other memory layout (the question behind a model entry's cpu_layout)."""
    other = torch.contiguous_format if b.channels_last else torch.channels_last
    b.model.to(memory_format=other)
    x_other = b.x.contiguous(memory_format=other)
    floor_steps(b.model, b.optimizer, x_other, b.y, 1, b.dtype, b.device)
    rates = [b.images_per_s(lambda: floor_steps(b.model, b.optimizer, x_other, b.y, b.steps, b.dtype, b.device))
             for _ in range(args.rounds)]
    b.model.to(memory_format=memory_format(b.channels_last))
    return rates


def measure_compiled(b: Bench, args) -> dict:
    """Our step with torch.compile against the eager floor, alternating; compile time apart."""
    compiled = torch.compile(b.model)
    start = time.perf_counter()
    train_ours(b, compiled, seed=2, images=b.recipe.batch_size * 2)
    _sync(b.device)
    compile_time = time.perf_counter() - start
    rates, floors, ratios = [], [], []
    for round_ in range(args.rounds):
        pair = [("floor", b.floor), ("compiled", lambda: train_ours(b, compiled, seed=3))]
        for pipeline, fn in (pair if round_ % 2 == 0 else pair[::-1]):
            b.floor(int(0.5 / b.per_step) + 1)
            (floors if pipeline == "floor" else rates).append(b.images_per_s(fn))
        ratios.append(rates[-1] / floors[-1])
    return {"compile_time_s": compile_time, "ours_compiled": statistics.median(rates),
            "floor_during_compiled": statistics.median(floors), "compiled_vs_floor": statistics.median(ratios),
            "per_round_compiled_vs_floor": [round(r, 3) for r in ratios]}


def bench_experiment(name: str, args, device) -> dict:
    b = make_bench(name, args, device)
    b.floor(2)  # warm-up: allocator, cuDNN autotuning
    if args.floors_only:  # the two floors alone, for a run in other settings (see small_pages_floors)
        floor = statistics.median([b.images_per_s(b.floor) for _ in range(args.rounds)])
        rates, _, _ = measure_evaluation(b, argparse.Namespace(rounds=args.rounds))
        return {"experiment": name, "floor": floor, "eval_floor": statistics.median(rates["eval_floor"])}
    rates, ratios = measure_training(b, args)
    eval_rates, eval_ratios, eval_batch = measure_evaluation(b, args)
    rates.update(eval_rates)
    ratios.update(eval_ratios)
    if device.type == "cpu":
        rates["floor_other_layout"] = measure_other_layout(b, args)
    if b.recipe.augment != "none":
        rates.update(bench_crop_flip(b.recipe, b.images_dev[:b.recipe.batch_size], args.rounds, device))
    result = {k: statistics.median(v) for k, v in rates.items()}
    result.update({"experiment": name, "model": b.recipe.model, "image_size": b.recipe.image_size,
                   "batch_size": b.recipe.batch_size, "steps_per_round": b.steps, "rounds": args.rounds,
                   "report_style_workers": args.workers, "eval_batch_size": eval_batch,
                   "layout": "channels_last" if b.channels_last else "contiguous"})
    result.update({k: statistics.median(v) for k, v in ratios.items()})
    result["per_round"] = {k: [round(r, 3) for r in v] for k, v in ratios.items()}  # the spread behind each median
    if args.compile:
        compiled = measure_compiled(b, args)
        result["per_round"]["compiled_vs_floor"] = compiled.pop("per_round_compiled_vs_floor")
        result.update(compiled)
    return result


def eval_floor_fn(model, preprocess, images_dev, recipe, device, dtype):
    """The inference-only floor: the model alone on one preprocessed batch, as many batches as
    the evaluation of `images_dev` takes."""
    eval_batch = min(len(images_dev), Options().eval_batch_size if device.type == "cuda" else 512)
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


def bench_crop_flip(recipe, images, rounds, device) -> dict:
    """Random crop + flip alone, per image, at the training size: our uint8 gather against
    kornia.augmentation (float only), the well-kept library that does the same per image."""
    padding, g = crop_padding(recipe.image_size), torch.Generator().manual_seed(4)
    resized = images if images.shape[-1] == recipe.image_size else resize_like_pil(images, recipe.image_size)
    size = resized.shape[0]
    ours = lambda: crop_flip(resized, padding, sample_crop_flip(size, padding, g))  # noqa: E731
    fns = {"crop_flip_ours": ours}
    try:
        import kornia.augmentation as K
    except ImportError:
        print("kornia is not installed: its crop/flip is not measured (pip install kornia)")
    else:
        floats = resized.float()
        kornia_aug = torch.nn.Sequential(K.RandomCrop((recipe.image_size, recipe.image_size), padding=padding, p=1.0),
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
    env = provenance.environment(device, Numerics("fp32" if device.type == "cpu" else "bf16", "nchw", "benchmark"))
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
    write_results(args.out, f"throughput-{device.type}", env, args, results)


def write_results(out: str | None, kind: str, env: dict, args, results: list) -> None:
    """The benchmark's JSON: `out`, or benchmarks/results/KIND-<time>.json; with the machine and the command."""
    out = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                              f"{kind}-{datetime.datetime.now():%Y-%m-%d_%H-%M-%S}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    runfolder.write_json(out, {"environment": env, "command": provenance.command_line(), "args": vars(args),
                               "results": results})
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
