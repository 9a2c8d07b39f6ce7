"""What a run is and how it runs, each field declared once.

`Recipe` is the experiment: model, optimizer, schedule, data pipeline, split. `Options` is
where and how it runs: data folder, device, seed, checkpoints, extras. `Launch` says what to
run from one command (datasets, seeds, --resume). Every field is declared once, with its
help text, unit and rule (`knob`); from that declaration come its command-line flag, its
validation (of flags and of config.json alike), `--help`, the run's header line, config.json,
compare's recipe key, TensorBoard's hparams and llm_prompt.md's flag list. A field added to
Recipe is a flag of every script, and an older config.json without it reads with its default.

`resolve` turns a command line into what runs: the script's recipe <- the flags given <- the
--smoke rules <- the defaults that depend on where the repo is. Impossible values and
combinations are usage errors (exit 2) before anything is created.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from typing import Callable

from common.augment import AUGMENTATIONS
from common.devices import PRECISIONS
from common.errors import UserError
from common.models import MODELS
from common.optimizers import OPTIMIZERS, weight_decay_help
from common.schedules import SCHEDULES, warmup_schedules

DATASETS = ("cifar10", "cifar100")
TRAIN_IMAGES = 50_000                  # both CIFARs' official training split
FLOAT32_MAX = 3.4028234663852886e38    # a larger lr overflows the float32 weights at once
SEED_MAX = 2**63 - 1                   # torch's and numpy's seeds are 64-bit

# --smoke: images per class (train, test) of the synthetic sets, by the model entry's smoke_data
SMOKE_SIZES = {"small": {"cifar10": (60, 20), "cifar100": (6, 2)},
               "tiny": {"cifar10": (10, 5), "cifar100": (2, 1)}}
SMOKE_EPOCHS, SMOKE_BATCH, SMOKE_SAVE_EVERY = 2, 32, 1
SYNTHETIC = "synthetic"  # --smoke: DATA_DIR/synthetic/{small,tiny}/


# --- rules: value -> value, ValueError with the reason ------------------------------------

def number(kind: type, minimum: float, maximum: float, inclusive: bool = True) -> Callable:
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


def optional(rule: Callable) -> Callable:
    """The rule, or None (not set)."""
    return lambda value: None if value is None else rule(value)


def choice(options) -> Callable:
    """One of `options` (a registry's keys, or a tuple)."""
    def check(value):
        if not isinstance(value, str) or value not in options:
            raise ValueError(f"must be one of {', '.join(options)}, got {value!r}")
        return value
    check.options = tuple(options)
    return check


def of_type(kind: type, optional: bool = False) -> Callable:
    def check(value):
        if (value is None and optional) or (isinstance(value, kind) and not (kind is int and isinstance(value, bool))):
            return value
        raise ValueError(f"expected {kind.__name__}{' or null' if optional else ''}, got {value!r}")
    return check


def numbers(kind: type, minimum: float, maximum: float, length: int | None = None, optional: bool = False):
    """A list of numbers (a tuple in Python, a list in JSON, 'a,b,c' on the command line)."""
    one = number(kind, minimum, maximum)

    def check(value):
        if value is None and optional:
            return None
        if not isinstance(value, (list, tuple)) or not value or (length and len(value) != length):
            raise ValueError(f"expected {length or 'some'} numbers, got {value!r}")
        return tuple(one(v) for v in value)
    return check


# --- declarations -------------------------------------------------------------------------

def ints(text: str) -> tuple:
    return tuple(int(part) for part in text.split(","))


def floats(text: str) -> tuple:
    return tuple(float(part) for part in text.split(","))


@dataclass(frozen=True)
class Knob:
    help: str
    rule: Callable                 # value -> value, or ValueError with the reason
    parse: Callable                # command-line text -> value (before the rule)
    unit: str = ""
    show: object = "{name} {value}"  # the header's words: a template, a function of the value, or (if true, if false)
    changes_results: bool = True    # Options only: whether it can change the numbers (compare's key)
    when: tuple | None = None       # Recipe only: (predicate on the recipe, the words for it); None: all recipes
    repeat: bool = False            # the flag may be given several times; the value is the tuple of them


def knob(default, help: str, rule: Callable, unit: str = "", show: object = "{name} {value}",
         changes_results: bool = True, parse: Callable | None = None, when: tuple | None = None,
         repeat: bool = False):
    """A declared field: `parse` defaults to the default's type (tuples: comma-separated)."""
    if parse is None:
        kind = type(default[0]) if isinstance(default, tuple) else type(default)
        parse = {int: int, float: float, bool: bool}.get(kind, str)
        if isinstance(default, tuple):
            parse = ints if kind is int else floats
    return field(default=default, metadata={"knob": Knob(help, rule, parse, unit, show, changes_results, when, repeat)})


def either(names) -> str:
    """'a, b or c': a registry's names in words."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _positive() -> Callable:
    return number(int, 1, 10**9)


@dataclass(frozen=True)
class Recipe:
    """What an experiment is: two runs of one recipe differ only by their seed."""
    model: str = knob("tutorial_cnn", "network, by name (common/models.py)", choice(MODELS), show="{value}")
    pretrained: bool = knob(False, "start from the model's ImageNet weights (downloaded once)", of_type(bool),
                            show=("pretrained", "from scratch"),
                            when=(lambda r: MODELS[r.model].weights is not None, "models with pretrained weights"))
    epochs: int = knob(50, "training epochs", _positive(), "epochs", lambda v: f"{v} epoch{'s' * (v != 1)}")
    batch_size: int = knob(128, "training images per optimizer step, over all processes", _positive(),
                           "images", "batch {value}")
    optimizer: str = knob("adam", "optimizer, by name (common/optimizers.py)", choice(OPTIMIZERS), show="{value}")
    lr: float = knob(1e-3, "peak learning rate", number(float, 0, FLOAT32_MAX, inclusive=False), show="lr {value:g}")
    weight_decay: float = knob(1e-4, weight_decay_help(),
                               number(float, 0, FLOAT32_MAX), show="weight decay {value:g}")
    scheduler: str = knob("none", "learning-rate schedule, by name (common/schedules.py)", choice(SCHEDULES),
                          show="schedule {value}")
    warmup_epochs: int = knob(0, "linear warm-up from 0.1 to 1 of the peak lr, per step, before the schedule "
                                 f"({', '.join(warmup_schedules())})", number(int, 0, 10**9), "epochs",
                              lambda v: f"{v} warm-up epoch{'s' * (v != 1)}",
                              when=(lambda r: SCHEDULES[r.scheduler].allows_warmup,
                                    f"--scheduler {either(warmup_schedules())}"))
    step_milestones: tuple = knob((0.5, 0.75), "--scheduler step: where the lr drops, as shares of the epochs "
                                               "after warm-up", numbers(float, 0, 1), "shares",
                                  "milestones {value}", when=(lambda r: r.scheduler == "step", "--scheduler step"))
    step_gamma: float = knob(0.1, "--scheduler step: the lr's factor at each milestone",
                             number(float, 0, 1, inclusive=False), show="gamma {value:g}",
                             when=(lambda r: r.scheduler == "step", "--scheduler step"))
    plateau_factor: float = knob(0.5, "--scheduler plateau: the lr's factor when the validation loss stalls",
                                 number(float, 0, 1, inclusive=False), show="plateau factor {value:g}",
                                 when=(lambda r: r.scheduler == "plateau", "--scheduler plateau"))
    plateau_patience: int = knob(3, "--scheduler plateau: epochs without improvement before the lr drops",
                                 number(int, 0, 10**6), "epochs", "patience {value}",
                                 when=(lambda r: r.scheduler == "plateau", "--scheduler plateau"))
    image_size: int = knob(32, "side of the model's input; images are resized to it on the device",
                           number(int, 8, 4096), "px", "{value} px")
    augment: str = knob("none", "augmentation policy, by name (common/augment.py)", choice(AUGMENTATIONS),
                        show="augmentation {value}")
    mean: tuple | None = knob(None, "per-channel mean subtracted from inputs in [0, 1] (default: the model's "
                                    "normalization)", numbers(float, -1e3, 1e3, 3, optional=True),
                              show="mean {value}", parse=floats)
    std: tuple | None = knob(None, "per-channel divisor of inputs in [0, 1] (default: the model's normalization)",
                             numbers(float, 1e-6, 1e3, 3, optional=True), show="std {value}", parse=floats)
    val_fraction: float = knob(0.1, "share of the 50,000 training images held out for validation "
                                    "(model selection)", number(float, 0, 0.5, inclusive=False), "share",
                               "validation {value:g}")
    split_seed: int = knob(0, "seed of the stratified train/validation split (fixed across --seed)",
                           number(int, 0, 2**32 - 1), show="split seed {value}")
    train_subset: int | None = knob(None, "train on a stratified subset of this many images of the training split "
                                          "(validation and test unchanged): a quick real-data check",
                                    optional(number(int, 2, TRAIN_IMAGES)), "images", "train subset {value}",
                                    parse=int)


@dataclass(frozen=True)
class Options:
    """Where and how a run runs; `changes_results` marks those that can change its numbers."""
    seed: int = knob(0, "seed for initialisation, shuffling and augmentation", number(int, 0, SEED_MAX),
                     changes_results=False)
    data_dir: str = knob("", "where datasets are cached; downloaded there once if missing (default: data/ "
                             "beside the scripts)", of_type(str), changes_results=False)
    out: str = knob("", "output root: runs go to OUT/cifar_10/<time>/ and OUT/cifar_100/<time>/ (default: ex_N/ "
                        "beside the scripts; ex_N_smoke/ with --smoke)", of_type(str), changes_results=False)
    device: str = knob("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:1, mps", of_type(str),
                       changes_results=False)
    save_every: int = knob(10, "write epoch-N.pth (weights) every N epochs; 0: only best.pth and last.pth",
                           number(int, 0, 10**9), "epochs", changes_results=False)
    eval_batch_size: int = knob(1024, "images per evaluation batch", _positive(), "images",
                                changes_results=False)
    compile: bool = knob(False, "torch.compile the model (slower start, faster steps)", of_type(bool))
    precision: str = knob("auto", "the arithmetic: auto (CUDA: bf16 where supported, else fp16 with a grad "
                                  "scaler; a CPU: bf16 where it has native bf16 and the model's entry says bf16 "
                                  "pays, else fp32), fp32, bf16 (on a CPU without native bf16: emulated, slow), "
                                  "fp16 (CUDA)", choice(PRECISIONS))
    weights: str | None = knob(None, "a local state dict to start from instead of random or downloaded weights",
                               of_type(str, optional=True))
    smoke: bool = knob(False, f"tiny synthetic data in the official formats, {SMOKE_EPOCHS} epochs and batch "
                              f"{SMOKE_BATCH} unless given: the whole script offline in seconds", of_type(bool))
    tta: bool = knob(False, "also test with horizontal-flip test-time augmentation (beside the plain metrics)",
                     of_type(bool), changes_results=False)
    tensorboard: bool = knob(False, "also write TensorBoard event files into the run folder", of_type(bool),
                             changes_results=False)


@dataclass(frozen=True)
class Launch:
    """What one command runs: which datasets and seeds, or which interrupted run to continue."""
    dataset: str = knob("all", "which dataset; all: CIFAR-10, then CIFAR-100", choice(DATASETS + ("all",)))
    seeds: tuple | None = knob(None, "comma-separated seeds, e.g. 0,1,2: one run folder per seed and dataset",
                               numbers(int, 0, SEED_MAX, optional=True), parse=ints)
    resume: str | None = knob(None, "continue an interrupted run (a run folder) or plan (its sweeps/NAME folder) "
                                    "exactly as it was started; only where it runs (--device, --jobs, --launcher, "
                                    "--slurm-*) may be given with it",
                              of_type(str, optional=True))
    sweep: tuple = knob((), "FIELD=V1,V2,...: one plan member per value of a recipe field; repeat the flag to "
                            "sweep several fields (their product); values of a list field are separated by ';'",
                        lambda v: v, parse=lambda text: sweep_values(text), repeat=True)
    name: str | None = knob(None, "the plan's name: it lives in OUT/sweeps/NAME/, and the same command with the "
                                  "same name continues it (default: the start time)",
                            of_type(str, optional=True), parse=lambda text: plan_name(text))
    jobs: int = knob(1, "plan members run at once on this machine, each a process with its share of the CPU "
                        "threads (on a GPU, sharing it)", number(int, 1, 256))
    launcher: str = knob("local", "local: run the plan here; slurm: submit it as one job array (submitit)",
                         choice(("local", "slurm")))
    slurm_partition: str | None = knob(None, "Slurm partition (default: the cluster's)", of_type(str, optional=True))
    slurm_time: int = knob(60, "Slurm time limit of one member's task", number(int, 1, 10**6), "minutes")
    slurm_gpus: int = knob(0, "GPUs per Slurm task", number(int, 0, 64))
    slurm_cpus: int = knob(2, "CPUs per Slurm task (its torch threads)", number(int, 1, 1024))
    slurm_parallel: int = knob(0, "tasks of the array running at once (its % limit; 0: no limit)",
                               number(int, 0, 10**6))
    dry_run: bool = knob(False, "print what would run (the resolved recipe and options, as JSON) and exit, "
                                "writing nothing", of_type(bool))


def sweep_values(text: str) -> tuple:
    """'lr=0.001,0.003' -> ('lr', (0.001, 0.003)), each value read by the field's own parse and rule;
    a list field's values are separated by ';' (--sweep mean=0.5,0.5,0.5;0.4,0.4,0.4)."""
    name, sep, values = text.partition("=")
    name = name.strip().replace("-", "_")
    fields = knobs(Recipe)
    if name == "seed":
        raise ValueError("the seed is no recipe field: give --seeds 0,1,2 for one member per seed")
    if not sep:
        raise ValueError(f"expected FIELD=V1,V2,..., got {text!r}")
    if name not in fields:
        raise ValueError(f"{name!r} is no recipe field; the recipe fields are {', '.join(fields)}")
    if not values.strip(","):
        raise ValueError(f"{name}= needs values, e.g. {name}=V1,V2")
    k, default = fields[name]
    parts = values.split(";") if isinstance(default, tuple) or name in ("mean", "std") else values.split(",")
    parsed = []
    for part in parts:
        try:
            parsed.append(k.rule(k.parse(part.strip()) if k.parse is not bool else boolean(part)))
        except ValueError as e:
            raise ValueError(f"{name}={part.strip()}: {e}") from None
    if len(set(map(str, parsed))) != len(parsed):
        raise ValueError(f"{name}'s values must be distinct, got {values!r} (the same value written twice?)")
    return name, tuple(parsed)


def boolean(text: str) -> bool:
    words = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
    if text.strip().lower() not in words:
        raise ValueError(f"expected true or false, got {text!r}")
    return words[text.strip().lower()]


def batch_size_problem(batch_size: int, processes: int, train_images: int | None) -> str | None:
    """What makes a batch size untrainable, in one line, or None: BatchNorm needs two images per
    process and step; a batch cannot be larger than the training split (None: not known yet)."""
    if batch_size < 2:
        return "--batch-size must be at least 2: BatchNorm cannot train on one image per step"
    if batch_size % processes or batch_size // processes < 2:
        return (f"--batch-size {batch_size} does not split into {processes} equal batches of at least 2 "
                f"(one per torchrun process)")
    if train_images is not None and batch_size > train_images:
        return f"--batch-size {batch_size} is larger than the {train_images:,}-image training split"
    return None


def plan_name(text: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=,+-]{0,99}", text):
        raise ValueError(f"a plan name is a folder name of letters, digits and _.=,+- , got {text!r}")
    return text


def knobs(cls) -> dict:
    """{field name: (Knob, default)} of a declared dataclass, in declaration order."""
    return {f.name: (f.metadata["knob"], f.default) for f in fields(cls)}


def applies(k: Knob, recipe: Recipe) -> bool:
    return k.when is None or bool(k.when[0](recipe))


def recipe_key_fields() -> tuple:
    """The fields two runs must share to be seeds of one recipe (compare's rows)."""
    return tuple(knobs(Recipe)) + tuple(n for n, (k, _) in knobs(Options).items() if k.changes_results)


# --- dicts (config.json) <-> dataclasses -----------------------------------------------

def from_dict(cls, values, source: str) -> tuple:
    """(instance, names filled from defaults): every field checked by its rule; unknown keys are ignored."""
    if not isinstance(values, dict):
        raise UserError(f"{source} is not an object")
    clean, defaulted = {}, []
    for name, (k, default) in knobs(cls).items():
        if name not in values:
            defaulted.append(name)
            continue
        value = values[name]
        try:
            clean[name] = k.rule(tuple(value) if isinstance(value, list) else value)
        except ValueError as e:
            raise UserError(f"{source}: field '{name}' {e}") from None
    return cls(**clean), defaulted


def to_dict(obj) -> dict:
    return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v for f in fields(obj)}


def header_words(recipe: Recipe) -> list:
    """The recipe as the run header shows it: each field's `show` template, in declaration order."""
    words = []
    for name, (k, _) in knobs(Recipe).items():
        value = getattr(recipe, name)
        if value is None or not applies(k, recipe):
            continue
        if isinstance(k.show, tuple):  # a boolean's two words
            words.append(k.show[0] if value else k.show[1])
        elif callable(k.show):
            words.append(k.show(value))
        else:
            shown = ",".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
            words.append(k.show.format(name=name.replace("_", " "), value=shown))
    return words


def resolved_recipe(recipe: Recipe) -> Recipe:
    """Defaults that depend on other fields filled in: the model's normalization. Called once per
    plan member (common.plans.plan.make_plan), after its swept values are in."""
    mean, std = MODELS[recipe.model].normalization
    return dataclasses.replace(recipe, mean=recipe.mean or mean, std=recipe.std or std)


def is_resolved(recipe: Recipe) -> bool:
    return recipe.mean is not None and recipe.std is not None


def data_folder(recipe: Recipe, options: Options) -> str:
    """Where a run's data sets live: --data-dir, or under --smoke the synthetic set of the model's size."""
    return os.path.join(options.data_dir, MODELS[recipe.model].smoke_data) if options.smoke else options.data_dir

