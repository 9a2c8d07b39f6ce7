"""One dataclass describes an experiment; the command line overrides its fields.

Each `ex_N.py` builds a `Config` with the experiment's recipe. `parse_args` turns
`--epochs 3 --lr 1e-4 ...` into a copy of it, so that the resolved config written to
`config.json` is the single source of truth for what ran.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass

DATASETS = ("cifar10", "cifar100")
MODELS = ("tutorial_cnn", "seed_cnn", "efficientnet_v2_s")
OPTIMIZERS = ("adam", "adamw", "lion", "sgd")
SCHEDULERS = ("none", "cosine", "step", "plateau", "onecycle")
AUGMENTS = ("none", "crop_flip")
CIFAR_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
    data_dir: str = "data"
    out: str = ""                        # "" -> ex_N/ beside the script
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
        """Padding in px for RandomCrop: 4 at 32 px (the usual CIFAR recipe), 16 at 128 px (the seed's)."""
        return self.image_size // 8


def _bounded(kind: type, minimum: float, inclusive: bool):
    """An argparse type: a finite `kind` that is >= minimum (inclusive) or > minimum."""
    word = {int: "a whole number", float: "a number"}[kind]

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {word}, got {text!r}") from None
        if not math.isfinite(value) or (value < minimum if inclusive else value <= minimum):
            bound = f"at least {minimum}" if inclusive else f"above {minimum}"
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text}")
        return value

    return parse


_positive_int = _bounded(int, 1, inclusive=True)
_non_negative_int = _bounded(int, 0, inclusive=True)
_positive_float = _bounded(float, 0, inclusive=False)
_non_negative_float = _bounded(float, 0, inclusive=True)


def _seed_list(text: str) -> tuple:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0,1,2, got {text!r}") from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"seeds must be distinct and 0 or more, got {text!r}")
    return seeds


def build_parser(config: Config, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=DATASETS + ("all",), default=config.dataset,
                   help="which dataset to train on; 'all' runs CIFAR-10, then CIFAR-100 (default: %(default)s)")
    p.add_argument("--epochs", type=_positive_int, default=config.epochs, help="epochs to train (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=config.batch_size,
                   help="training batch size (default: %(default)s)")
    p.add_argument("--lr", type=_positive_float, default=config.lr, help="peak learning rate (default: %(default)s)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=config.weight_decay,
                   help="weight decay (default: %(default)s)")
    p.add_argument("--scheduler", choices=SCHEDULERS, default=config.scheduler,
                   help="learning-rate schedule, stepped once per epoch (default: %(default)s)")
    p.add_argument("--warmup-epochs", type=_non_negative_int, default=config.warmup_epochs,
                   help="linear warm-up epochs before the schedule (default: %(default)s)")
    p.add_argument("--seed", type=_non_negative_int, default=config.seed,
                   help="seed for initialisation, shuffling and augmentation (default: %(default)s)")
    p.add_argument("--seeds", type=_seed_list, default=(),
                   help="comma-separated seeds, e.g. 0,1,2: one run folder per seed and dataset")
    p.add_argument("--data-dir", default=config.data_dir,
                   help="where datasets are cached; downloaded there once if missing (default: %(default)s)")
    p.add_argument("--out", default=config.out,
                   help="output root; runs go to OUT/cifar_10/<time>/ and OUT/cifar_100/<time>/ "
                        "(default: ex_N/ beside the script)")
    p.add_argument("--device", default=config.device,
                   help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps (default: %(default)s)")
    p.add_argument("--save-every", type=_non_negative_int, default=config.save_every,
                   help="write epoch-N.pth every N epochs; 0 = only best.pth and last.pth (default: %(default)s)")
    p.add_argument("--compile", action="store_true", default=config.compile,
                   help="torch.compile the model (slower start, faster steps)")
    p.add_argument("--no-amp", dest="amp", action="store_false", default=config.amp,
                   help="disable mixed precision on CUDA")
    p.add_argument("--tta", action="store_true",
                   help="also test with horizontal-flip test-time augmentation (reported beside the plain metrics)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into the run folder (needs the tensorboard package)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue an interrupted run in its own folder from its last.pth")
    p.add_argument("--smoke", action="store_true",
                   help="tiny synthetic data in the official formats, 2 epochs: checks the whole script offline")
    if config.model == "efficientnet_v2_s":
        p.add_argument("--weights", metavar="PATH", default=None,
                       help="local EfficientNetV2-S state dict to start from instead of downloading ImageNet weights")
        p.add_argument("--no-pretrained", dest="pretrained", action="store_false", default=config.pretrained,
                       help="train from scratch (random initialisation)")
    return p


def parse_args(config: Config, description: str, argv: list[str] | None = None) -> Config:
    """A copy of `config` with the command line applied. Bad values exit with a usage error (code 2)."""
    parser = build_parser(config, description)
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()}
    if overrides.get("weights") and not os.path.isfile(overrides["weights"]):
        parser.error(f"--weights: no such file: {overrides['weights']}")
    if overrides["warmup_epochs"] >= overrides["epochs"] and overrides["warmup_epochs"] > 0:
        parser.error(f"--warmup-epochs ({overrides['warmup_epochs']}) must be less than --epochs ({overrides['epochs']})")
    resolved = dataclasses.replace(config, **overrides)
    if resolved.smoke:
        # Offline by construction: no download of data or weights.
        resolved = dataclasses.replace(resolved, pretrained=False, weights=None)
    return resolved


def config_from_dict(values: dict) -> Config:
    """Rebuild a Config from config.json (tuples come back as lists)."""
    names = {f.name for f in dataclasses.fields(Config)}
    clean = {k: (tuple(v) if k in ("mean", "std") else v) for k, v in values.items() if k in names}
    return Config(**clean)
