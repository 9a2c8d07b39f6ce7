"""One dataclass describes an experiment; the command line overrides its fields.

Each `ex_N.py` builds a `Config` with the experiment's recipe. `resolve` is the one place
that turns a command line into the config that runs: flags the user gave (argparse knows
"not given" from "given"), the --smoke rules, the defaults that depend on where the repo
is, and --resume's saved config. The result is written to `config.json`, the single source
of truth for what ran, and read back (validated) by --resume.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass

from common.errors import UserError

DATASETS = ("cifar10", "cifar100")
MODELS = ("tutorial_cnn", "three_block_cnn", "efficientnet_v2_s")
OPTIMIZERS = ("adam", "adamw", "lion", "sgd")
SCHEDULERS = ("none", "cosine", "step", "plateau", "onecycle")
AUGMENTS = ("none", "crop_flip")
CIFAR_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
TRAIN_IMAGES = 50_000                  # both CIFARs' official training split
FLOAT32_MAX = 3.4028234663852886e38    # a larger lr overflows the float32 weights at once
SEED_MAX = 2**63 - 1                   # torch's and numpy's seeds are 64-bit

# --smoke: images per class (train, test) of the synthetic sets, epochs and batch size. EfficientNet
# (20M parameters, slow on a CPU) gets the "tiny" sets so that every script's smoke run stays short.
SMOKE_SIZES = {"small": {"cifar10": (60, 20), "cifar100": (6, 2)},
               "tiny": {"cifar10": (10, 5), "cifar100": (2, 1)}}
SMOKE_EPOCHS, SMOKE_BATCH, SMOKE_SAVE_EVERY = 2, 32, 1


def smoke_kind(model: str) -> str:
    return "tiny" if model == "efficientnet_v2_s" else "small"


@dataclass
class Config:
    # --- the recipe: what differs between experiments -----------------------------------
    experiment: str                      # "ex_1" ...; names the output folder and guards --resume
    model: str                           # one of MODELS
    epochs: int
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4           # L2 for adam/sgd, decoupled for adamw/lion
    scheduler: str = "none"
    warmup_epochs: int = 0               # linear warm-up from lr/10, before the schedule
    image_size: int = 32                 # px; images are resized to it on the device
    augment: str = "none"                # "crop_flip": RandomCrop(size, padding=size/8) + HFlip
    mean: tuple = CIFAR_MEAN_STD[0]      # per channel, for inputs in [0, 1]
    std: tuple = CIFAR_MEAN_STD[1]
    pretrained: bool = False             # ImageNet weights (EfficientNet only)
    # --- how to run it: the same for every experiment ------------------------------------
    weights: str | None = None           # local state dict instead of the download
    dataset: str = "all"
    seed: int = 0
    split_seed: int = 0                  # the 45k/5k split stays fixed across --seed
    val_fraction: float = 0.1            # 5,000 of the 50,000 training images
    data_dir: str = ""                   # "" -> data/ beside the scripts
    out: str = ""                        # "" -> ex_N/ beside the scripts
    device: str = "auto"
    save_every: int = 10                 # epochs between epoch-N.pth files; 0 = never
    eval_batch_size: int = 1024
    compile: bool = False
    amp: bool = True                     # CUDA only: bf16 where supported, else fp16 + scaler
    smoke: bool = False
    resume: str | None = None
    seeds: tuple = ()                    # --seeds 0,1,2: one run folder per seed
    tta: bool = False                    # also report horizontal-flip test-time augmentation
    tensorboard: bool = False            # also write TensorBoard event files into the run folder

    def crop_padding(self) -> int:
        """Padding in px for RandomCrop: 4 at 32 px (the usual CIFAR recipe), 16 at 128 px (the report's)."""
        return self.image_size // 8


# --- checking values: one rule per field, shared by the command line and config.json -----

def _number(kind: type, minimum: float, maximum: float, inclusive: bool = True):
    word = {int: "a whole number", float: "a number"}[kind]

    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise ValueError(f"expected {word}, got {value!r}")
        low_ok = value >= minimum if inclusive else value > minimum
        if not (math.isfinite(value) and low_ok and value <= maximum):
            bound = f"at least {minimum}" if inclusive else f"above {minimum}"
            raise ValueError(f"must be a finite number {bound} and at most {maximum:g}, got {value}")
        return kind(value)
    return check


def _choice(options: tuple):
    def check(value):
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value
    return check


def _of_type(kind: type, optional: bool = False):
    def check(value):
        if (value is None and optional) or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            return value
        raise ValueError(f"expected {kind.__name__}{' or null' if optional else ''}, got {value!r}")
    return check


def _triple(value):
    if not (isinstance(value, (list, tuple)) and len(value) == 3):
        raise ValueError(f"expected 3 numbers, got {value!r}")
    return tuple(_number(float, 0, 1e3)(v) for v in value)


def _seed_tuple(value):
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of seeds, got {value!r}")
    return tuple(_number(int, 0, SEED_MAX)(v) for v in value)


_positive_int = _number(int, 1, 10**9)
_count = _number(int, 0, 10**9)
RULES = {
    "experiment": _of_type(str), "model": _choice(MODELS), "epochs": _positive_int, "batch_size": _positive_int,
    "optimizer": _choice(OPTIMIZERS), "lr": _number(float, 0, FLOAT32_MAX, inclusive=False),
    "weight_decay": _number(float, 0, FLOAT32_MAX), "scheduler": _choice(SCHEDULERS), "warmup_epochs": _count,
    "image_size": _number(int, 8, 4096), "augment": _choice(AUGMENTS), "mean": _triple, "std": _triple,
    "pretrained": _of_type(bool), "weights": _of_type(str, optional=True), "dataset": _choice(DATASETS + ("all",)),
    "seed": _number(int, 0, SEED_MAX), "split_seed": _number(int, 0, 2**32 - 1),
    "val_fraction": _number(float, 0, 0.5, inclusive=False), "data_dir": _of_type(str), "out": _of_type(str),
    "device": _of_type(str), "save_every": _count, "eval_batch_size": _positive_int, "compile": _of_type(bool),
    "amp": _of_type(bool), "smoke": _of_type(bool), "resume": _of_type(str, optional=True), "seeds": _seed_tuple,
    "tta": _of_type(bool), "tensorboard": _of_type(bool),
}
assert set(RULES) == {f.name for f in dataclasses.fields(Config)}, "every Config field needs a rule"


def config_from_dict(values, source: str = "config.json") -> Config:
    """Rebuild a Config from config.json; a missing field, wrong type or impossible value is a UserError."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: 'config' is not an object")
    clean = {}
    for name, rule in RULES.items():
        if name not in values:
            raise UserError(f"{source}: config has no '{name}'; it was not written by this repo")
        try:
            clean[name] = rule(values[name])
        except ValueError as e:
            raise UserError(f"{source}: config field '{name}' {e}") from None
    if clean["warmup_epochs"] and clean["warmup_epochs"] >= clean["epochs"]:
        raise UserError(f"{source}: warmup_epochs ({clean['warmup_epochs']}) must be less than epochs")
    return Config(**clean)


def load_run_record(run_dir: str) -> tuple[Config, dict]:
    """(Config, the whole config.json) of a run folder, validated."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise UserError(f"{run_dir} is not a run folder (no config.json)")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged: {e}") from None
    if not isinstance(record, dict) or record.get("dataset") not in DATASETS:
        raise UserError(f"{path} is damaged: no dataset named")
    if not isinstance(record.get("resumes", []), list):
        raise UserError(f"{path} is damaged: 'resumes' is not a list")
    return config_from_dict(record.get("config"), path), record


# --- the command line --------------------------------------------------------------------

def _flag_type(rule, parse):
    """An argparse type: parse the text, then apply the field's rule; failures are usage errors."""
    def convert(text: str):
        try:
            return rule(parse(text))
        except ValueError as e:
            message = str(e) if "must" in str(e) or "expected" in str(e) else f"expected a number, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None
    return convert


def _seed_list(text: str) -> tuple:
    try:
        seeds = _seed_tuple([int(part) for part in text.split(",")])
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2 (0 to {SEED_MAX}), got {text!r}") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct, got {text!r}")
    return seeds


def build_parser(config: Config, description: str) -> argparse.ArgumentParser:
    """Every flag defaults to 'not given' (SUPPRESS); the help shows the recipe's value."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    number = {name: _flag_type(RULES[name], int if isinstance(getattr(config, name), int) else float)
              for name in ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "seed", "save_every")}
    add = p.add_argument
    add("--dataset", choices=DATASETS + ("all",),
        help=f"which dataset to train on; 'all' runs CIFAR-10, then CIFAR-100 (default: {config.dataset})")
    add("--epochs", type=number["epochs"], help=f"epochs to train (default: {config.epochs}; --smoke: {SMOKE_EPOCHS})")
    add("--batch-size", type=number["batch_size"],
        help=f"training batch size (default: {config.batch_size}; --smoke: {SMOKE_BATCH})")
    add("--lr", type=number["lr"], help=f"peak learning rate (default: {config.lr:g})")
    add("--weight-decay", type=number["weight_decay"], help=f"weight decay (default: {config.weight_decay:g})")
    add("--scheduler", choices=SCHEDULERS,
        help=f"learning-rate schedule, stepped once per epoch (default: {config.scheduler})")
    add("--warmup-epochs", type=number["warmup_epochs"],
        help=f"linear warm-up epochs before the schedule (default: {config.warmup_epochs})")
    add("--seed", type=number["seed"], help=f"seed for initialisation, shuffling and augmentation (default: {config.seed})")
    add("--seeds", type=_seed_list, help="comma-separated seeds, e.g. 0,1,2: one run folder per seed and dataset")
    add("--data-dir", help="where datasets are cached; downloaded there once if missing "
                           "(default: data/ beside the scripts, wherever you run them from)")
    add("--out", help="output root; runs go to OUT/cifar_10/<time>/ and OUT/cifar_100/<time>/ "
                      "(default: ex_N/ beside the scripts; ex_N_smoke/ with --smoke)")
    add("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default: auto)")
    add("--save-every", type=number["save_every"],
        help=f"write epoch-N.pth (weights) every N epochs; 0 = only best.pth and last.pth "
             f"(default: {config.save_every}; --smoke: {SMOKE_SAVE_EVERY})")
    add("--compile", action="store_true", help="torch.compile the model (slower start, faster steps)")
    add("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    add("--tta", action="store_true",
        help="also test with horizontal-flip test-time augmentation (reported beside the plain metrics)")
    add("--tensorboard", action="store_true",
        help="also write TensorBoard event files into the run folder (needs the tensorboard package)")
    add("--resume", metavar="RUN_DIR",
        help="continue an interrupted run in its own folder from its last.pth, exactly as it was started "
             "(only --device may be given with it)")
    add("--smoke", action="store_true",
        help=f"tiny synthetic data in the official formats, {SMOKE_EPOCHS} epochs unless --epochs: "
             f"checks the whole script offline in seconds")
    if config.model == "efficientnet_v2_s":
        add("--weights", metavar="PATH",
            help="local EfficientNetV2-S state dict to start from instead of downloading ImageNet weights")
        add("--no-pretrained", dest="pretrained", action="store_false", help="train from scratch (random initialisation)")
    return p


RESUME_FLAGS = {"resume", "device"}  # what --resume can honour; everything else is the saved run's


def resolve(recipe: Config, description: str, argv: list[str] | None, repo_root: str) -> Config:
    """The config that runs: recipe <- flags given <- smoke rules <- repo defaults (or --resume's saved config).

    Impossible values are usage errors (exit 2) before anything is created.
    """
    parser = build_parser(recipe, description)
    given = vars(parser.parse_args(argv))
    if "device" in given:
        from common.devices import check_device
        problem = check_device(given["device"])
        if problem:
            parser.error(f"--device: {problem}")
    if "resume" in given:
        extra = sorted(set(given) - RESUME_FLAGS)
        if extra:
            flags = ", ".join("--" + name.replace("_", "-") for name in extra)
            parser.error(f"--resume continues a run exactly as it was started, so it cannot honour {flags}; "
                         f"start a new run to change them")
        return dataclasses.replace(recipe, **given)  # the saved config is read by experiment.resume
    cfg = dataclasses.replace(recipe, **given)
    cfg = dataclasses.replace(cfg, data_dir=cfg.data_dir or os.path.join(repo_root, "data"),
                              out=cfg.out or os.path.join(repo_root, cfg.experiment + ("_smoke" if cfg.smoke else "")))
    if cfg.smoke:  # offline by construction: synthetic data, no download of weights; every file written
        cfg = dataclasses.replace(
            cfg, pretrained=False, weights=None, epochs=given.get("epochs", SMOKE_EPOCHS),
            batch_size=given.get("batch_size", SMOKE_BATCH), save_every=given.get("save_every", SMOKE_SAVE_EVERY),
            data_dir=os.path.join(cfg.data_dir, "synthetic", smoke_kind(cfg.model)))
    _check_combination(parser, cfg)
    return cfg


def _check_combination(parser: argparse.ArgumentParser, cfg: Config) -> None:
    if cfg.weights and not os.path.isfile(cfg.weights):
        parser.error(f"--weights: no such file: {cfg.weights}")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        parser.error(f"--warmup-epochs ({cfg.warmup_epochs}) must be less than --epochs ({cfg.epochs})")
    train_images = TRAIN_IMAGES - round(cfg.val_fraction * TRAIN_IMAGES)
    if not cfg.smoke and cfg.batch_size > train_images:
        parser.error(f"--batch-size {cfg.batch_size} is larger than the {train_images:,}-image training split")
