"""The command line of every ex_N.py, generated from common.config's declarations.

Each declared field is a flag (`--batch-size`, `--no-pretrained`, `--mean 0.5,0.5,0.5`) whose help
gives its unit and this script's default, and whose value passes the field's rule; argparse
knows "not given" from "given". `resolve` is the one place where the command line, the
--smoke rules, the repo-relative defaults and --resume meet.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import shlex
from dataclasses import dataclass

from common import REPO_ROOT
from common.config import (SMOKE_BATCH, SMOKE_EPOCHS, SMOKE_SAVE_EVERY, SYNTHETIC, TRAIN_IMAGES, Launch, Options,
                           Recipe, applies, batch_size_problem, floats, ints, knobs)
from common.devices import check_device
from common.models import MODELS

GROUPS = (("recipe (defaults: this script's recipe)", Recipe), ("run options", Options), ("what to run", Launch))
SMOKE_DEFAULTS = {"epochs": SMOKE_EPOCHS, "batch_size": SMOKE_BATCH, "save_every": SMOKE_SAVE_EVERY}
# what --resume can honour: where it runs; everything else is the saved run's (or plan's)
RESUME_FLAGS = {"resume", "device", "jobs", "launcher", "slurm_partition", "slurm_time", "slurm_gpus", "slurm_cpus",
                "slurm_parallel"}


@dataclass(frozen=True)
class Command:
    """What one command line asks for, resolved."""
    experiment: str
    script_recipe: Recipe  # the script's own, resolved: config.json records it beside what ran
    recipe: Recipe
    options: Options
    launch: Launch
    given: frozenset       # the fields given on the command line


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value in (None, "", ()) else str(value)


def _flag_type(k, kind_word: str):
    """argparse type: parse the text, then apply the field's rule; failures are usage errors (exit 2)."""
    def convert(text: str):
        try:
            value = k.parse(text)
        except ValueError as e:  # int() and float() say little; the repo's own parsers say what is wrong
            own_words = k.parse not in (int, float, ints, floats)
            raise argparse.ArgumentTypeError(str(e) if own_words else f"expected {kind_word}, got {text!r}") from None
        try:
            return k.rule(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _add_field(group, name: str, k, default) -> None:
    unit = f" [{k.unit}]" if k.unit else ""
    smoke = f"; --smoke: {SMOKE_DEFAULTS[name]}" if name in SMOKE_DEFAULTS else ""
    own_default = "(default:" in k.help  # the help says it in words
    help_text = (f"{k.help}{unit}" + ("" if own_default else f" (default: {_shown(default)}{smoke})")).replace("%", "%%")
    if isinstance(default, bool):
        group.add_argument(flag(name), action=argparse.BooleanOptionalAction, help=help_text)
        return
    if k.repeat:
        group.add_argument(flag(name), action="append", type=_flag_type(k, "FIELD=V1,V2"), help=help_text,
                           metavar="FIELD=V1,V2")
        return
    options = getattr(k.rule, "options", None)
    kind_word = {int: "a whole number", float: "a number"}.get(k.parse, "numbers like 1,2,3")
    group.add_argument(flag(name), type=_flag_type(k, kind_word), help=help_text,
                       choices=list(options) if options else None,
                       metavar=("{" + ",".join(options) + "}") if options else name.upper())


class Parser(argparse.ArgumentParser):
    """A usage error is one line (the flag and what is wrong with it), exit code 2: with some
    thirty flags, argparse's usage summary would bury it."""

    def error(self, message: str):
        if os.environ.get("RANK", "0") != "0":  # under torchrun, one process speaks
            self.exit(2)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(script_recipe: Recipe, description: str) -> argparse.ArgumentParser:
    """Every flag defaults to 'not given' (SUPPRESS); the help shows the script's value."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                    argument_default=argparse.SUPPRESS, usage="%(prog)s [flags]   (every flag below)")
    defaults = {Recipe: script_recipe, Options: Options(), Launch: Launch()}
    for title, cls in GROUPS:
        group = parser.add_argument_group(title)
        for name, (k, _) in knobs(cls).items():
            _add_field(group, name, k, getattr(defaults[cls], name))
    return parser


def _split(given: dict) -> tuple:
    return tuple({k: v for k, v in given.items() if k in knobs(cls)} for _, cls in GROUPS)


def resolve(experiment: str, script_recipe: Recipe, description: str, argv: list | None,
            repo_root: str) -> Command:
    """What runs: the script's recipe <- flags given <- smoke rules <- repo defaults. Defaults that
    depend on the model are filled per member (common.plans.plan.make_plan), after swept values are in.
    With --resume, the saved run's recipe is read later (common.experiment.resume)."""
    parser = build_parser(script_recipe, description)
    given = vars(parser.parse_args(argv))
    if "device" in given and (problem := check_device(given["device"])):
        parser.error(f"--device: {problem}")
    recipe_given, options_given, launch_given = _split(given)
    if "sweep" in launch_given:
        launch_given["sweep"] = tuple(launch_given["sweep"])
    launch = dataclasses.replace(Launch(), **launch_given)
    if "resume" in given:
        _check_resume(parser, given)
        return Command(experiment, script_recipe, script_recipe, dataclasses.replace(Options(), **options_given),
                       launch, frozenset(given))
    recipe = dataclasses.replace(script_recipe, **recipe_given)
    options = dataclasses.replace(Options(), **options_given)
    options = dataclasses.replace(  # absolute: a plan's member or a --resume may start from another folder
        options, data_dir=data_root(os.path.abspath(options.data_dir or os.path.join(repo_root, "data"))),
        out=os.path.abspath(options.out or os.path.join(repo_root, experiment + "_smoke" * options.smoke)),
        weights=os.path.abspath(options.weights) if options.weights else None)
    if options.smoke:
        recipe, options = _smoke_rules(parser, recipe, options, given)
    check_combination(parser.error, recipe, options, given)
    _check_launch(parser, launch, given)
    _check_sweep(parser, recipe, options, launch, given)
    return Command(experiment, script_recipe, recipe, options, launch, frozenset(given))


def data_root(path: str) -> str:
    """--data-dir as the folder holding the datasets: an unpacked cifar-10-batches-py/ or cifar-100-python/
    given itself means the folder around it (where the other dataset is looked for too)."""
    if not os.path.basename(path).startswith("cifar-"):
        return path
    from common.data import SPECS  # torch: only for a path that may be one

    unpacked = {spec.folder: spec for spec in SPECS.values()}.get(os.path.basename(path))
    if unpacked and os.path.isfile(os.path.join(path, unpacked.test_files[0])):
        return os.path.dirname(path)
    return path


def _check_launch(parser, launch: Launch, given: dict) -> None:
    if "seed" in given and "seeds" in given:
        parser.error("give --seed or --seeds, not both")
    if launch.seeds and len(set(launch.seeds)) != len(launch.seeds):
        parser.error(f"--seeds must be distinct, got {','.join(map(str, launch.seeds))}")
    swept = [name for name, _ in launch.sweep]
    for name in swept:
        if swept.count(name) > 1 or name in given:
            parser.error(f"--sweep {name}=... is given twice, or beside {flag(name)}: give its values once")
    if launch.launcher == "local" and any(n.startswith("slurm_") for n in given):
        parser.error("the --slurm-* flags go with --launcher slurm")


def _check_sweep(parser, recipe: Recipe, options: Options, launch: Launch, given: dict) -> None:
    """Every combination of swept values must make a recipe that can run, before the plan is made."""
    swept = set(given) | {name for name, _ in launch.sweep}
    for combo in itertools.product(*(values for _, values in launch.sweep)):
        values = {name: value for (name, _), value in zip(launch.sweep, combo)}
        check_combination(parser.error, dataclasses.replace(recipe, **values), options, swept)


def _check_resume(parser, given: dict) -> None:
    if not given["resume"].strip():
        parser.error("--resume needs a run folder, got an empty string (an unset shell variable?)")
    extra = sorted(set(given) - RESUME_FLAGS)
    if extra:
        parser.error(f"--resume continues a run exactly as it was started, so it cannot honour "
                     f"{', '.join(flag(n) for n in extra)}; start a new run to change them")


def _smoke_rules(parser, recipe: Recipe, options: Options, given: dict) -> tuple:
    """Offline by construction: synthetic data, no weights to download; every file written."""
    for name in ("pretrained", "weights"):
        if given.get(name):
            parser.error(f"{flag(name)} does not go with --smoke (synthetic data, offline, from scratch); "
                         f"drop one of them")
    recipe = dataclasses.replace(recipe, pretrained=False, epochs=given.get("epochs", SMOKE_EPOCHS),
                                 batch_size=given.get("batch_size", SMOKE_BATCH))
    options = dataclasses.replace(options, save_every=given.get("save_every", SMOKE_SAVE_EVERY),
                                  data_dir=os.path.join(options.data_dir, SYNTHETIC))
    return recipe, options


def check_combination(error, recipe: Recipe, options: Options, given) -> None:
    """Combinations no single rule can see; `error` reports one line (parser.error: exit 2)."""
    entry = MODELS[recipe.model]
    for name, (k, _) in knobs(Recipe).items():
        if name in given and not applies(k, recipe):
            error(f"{flag(name)} is for {k.when[1]} only; this run has --model {recipe.model} --scheduler "
                  f"{recipe.scheduler}")
    if recipe.pretrained and entry.weights is None:
        error(f"--model {recipe.model} has no pretrained weights; give --weights PATH to start from a file")
    if options.weights and not os.path.isfile(options.weights):
        error(f"--weights: no such file: {options.weights}")
    if recipe.warmup_epochs and recipe.warmup_epochs >= recipe.epochs:
        error(f"--warmup-epochs ({recipe.warmup_epochs}) must be less than --epochs ({recipe.epochs})")
    if recipe.image_size < entry.min_image_size:
        error(f"--image-size {recipe.image_size} is too small for --model {recipe.model} "
              f"(at least {entry.min_image_size} px)")
    processes = int(os.environ.get("WORLD_SIZE") or 1)  # torchrun's
    train_images = None if options.smoke else TRAIN_IMAGES - round(recipe.val_fraction * TRAIN_IMAGES)
    if problem := batch_size_problem(recipe.batch_size, processes, train_images):
        error(problem)


# --- the printed command that continues a run or a plan --------------------------------------

def resume_command(experiment: str, target: str) -> str:
    """The one command that continues a plan or a run folder: what every message prints."""
    return f"python {script_path(experiment)} --resume {shlex.quote(target)}"


def script_path(experiment: str) -> str:
    """How to name ex_N.py in a command: relative to the current folder when inside it."""
    path = os.path.join(REPO_ROOT, experiment + ".py")
    relative = os.path.relpath(path)
    return shlex.quote(path if relative.startswith("..") else relative)


# --- llm_prompt.md's flag list: generated from the declarations --------------------------------

FLAGS_START, FLAGS_END = "<!-- flags:start -->", "<!-- flags:end -->"


def flags_markdown() -> str:
    """Every flag, grouped as --help groups them, one line each: what llm_prompt.md lists."""
    lines = []
    for title, cls in GROUPS:
        lines.append(f"- {title}:")
        for name, (k, default) in knobs(cls).items():
            unit = f" [{k.unit}]" if k.unit else ""
            names = f"`{flag(name)}` / `--no-{name.replace('_', '-')}`" if isinstance(default, bool) else f"`{flag(name)}`"
            lines.append(f"  - {names}{unit}: {k.help}")
    return "\n".join(lines) + "\n"


def write_flags_block(path: str) -> None:
    """Rewrite the block between FLAGS_START and FLAGS_END in `path` (python -m common.cli llm_prompt.md)."""
    from common.files import write_bytes

    with open(path) as f:
        text = f.read()
    i, j = text.index(FLAGS_START), text.index(FLAGS_END)
    write_bytes(path, (text[:i] + f"{FLAGS_START}\n{flags_markdown()}{text[j:]}").encode())


if __name__ == "__main__":
    import sys

    write_flags_block(sys.argv[1])
