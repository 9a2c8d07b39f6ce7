"""A command's runs as a plan: datasets x seeds x swept values, kept in sweep.json.

    python ex_1.py --sweep lr=0.0003,0.001,0.003 --seeds 0,1,2 --name lr
        -> ex_1/sweeps/lr/sweep.json and ex_1/sweeps/lr/cifar_10/lr=0.0003,seed=0/ ... (18 members)
    python ex_1.py --seeds 0,1                     (a plain multi-run command is a plan too)
        -> ex_1/sweeps/<time>/sweep.json and ex_1/cifar_10/<time>_seed0/ ... (4 members)

sweep.json lists every member: its dataset, its resolved recipe and options, its run folder
(relative to the plan's folder) and its status as the last launcher saw it. Every member's
folder name is fixed when the plan is made, so any process (a local job, a Slurm array task)
can run any member; a member's own run folder, under its lock, is the truth about its state:
complete (test.json), running (its lock is held), interrupted or failed (train.json), or not
started. Running the plan again (--resume PLAN_DIR, or the same command with the same --name)
skips complete members, resumes interrupted ones from last.pth and starts the rest.

Every command is a plan: a lone run and `--resume RUN_DIR` are one-member plans that are not
kept (no sweep.json); `todo()` is the one place that decides which members are left to run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from dataclasses import dataclass

from common import provenance, runfolder
from common.config import Options, Recipe, from_dict, resolved_recipe, to_dict
from common.errors import UserError

PLAN_FILE = runfolder.PLAN_FILE
PLAN_FORMAT = "cifar-experiments-sweep/1"
SWEEPS = "sweeps"  # OUT/sweeps/NAME/: where plans live


@dataclass(frozen=True)
class Member:
    id: str            # its run folder relative to the plan's folder, e.g. "cifar_10/lr=0.003,seed=1"
    dataset: str
    recipe: Recipe
    options: Options
    run_dir: str       # absolute


@dataclass(frozen=True)
class Plan:
    folder: str
    experiment: str
    name: str
    script_recipe: Recipe
    sweep: tuple       # ((field, (values...)), ...)
    members: tuple
    launcher: dict     # the last launcher's settings ({"kind": "local", "jobs": N} or Slurm's)
    kept: bool = True  # lives in sweep.json; False: a lone run or --resume RUN_DIR

    def member(self, member_id: str) -> Member:
        for member in self.members:
            if member.id == member_id:
                return member
        raise UserError(f"{os.path.join(self.folder, PLAN_FILE)} has no member {member_id!r}")


def _value_words(value) -> str:
    """A value as it appears in a folder name: 0.003, crop_flip, 0.5_0.75 (no '/'). A float's words
    read back as the same float (0.00123457 would name two nearby values alike)."""
    if isinstance(value, (list, tuple)):
        return "_".join(_value_words(v) for v in value)
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def make_plan(command, now: str) -> Plan:
    """The plan of a command line (not yet written); its members' values were checked by common.cli."""
    launch = command.launch
    datasets = ("cifar10", "cifar100") if launch.dataset == "all" else (launch.dataset,)
    seeds = launch.seeds or (command.options.seed,)
    sweep = tuple(launch.sweep or ())
    named = bool(sweep or launch.name)
    folder = os.path.join(command.options.out, SWEEPS, launch.name or now)
    members = []
    for combo in itertools.product(*(values for _, values in sweep)):
        recipe = resolved_recipe(dataclasses.replace(command.recipe, **{name: value for (name, _), value in zip(sweep, combo)}))
        for seed in seeds:
            options = dataclasses.replace(command.options, seed=seed)
            for dataset in datasets:
                words = [f"{name}={_value_words(value)}" for (name, _), value in zip(sweep, combo)]
                if named:
                    run_dir = os.path.join(folder, runfolder.DATASET_FOLDERS[dataset], ",".join(words + [f"seed={seed}"]))
                else:
                    run_dir = os.path.join(command.options.out, runfolder.DATASET_FOLDERS[dataset],
                                           now + (f"_seed{seed}" if len(seeds) > 1 else ""))
                members.append(Member(os.path.relpath(run_dir, folder), dataset, recipe, options, run_dir))
    ids = [m.id for m in members]
    shared = sorted({i for i in ids if ids.count(i) > 1})  # two members in one folder would be one run
    if shared:
        raise UserError(f"two members of this plan would share the folder {shared[0]}: give values that differ "
                        f"in their folder names")
    return Plan(folder, command.experiment, launch.name or now, resolved_recipe(command.script_recipe), sweep, tuple(members), {},
                kept=named or len(members) > 1 or launch.launcher == "slurm")


def from_run_folder(run_dir: str) -> Plan:
    """--resume RUN_DIR: the one-member plan that its config.json describes (not kept)."""
    run_dir = os.path.abspath(run_dir)
    record = runfolder.read_config(run_dir)
    member = Member(os.path.basename(run_dir), record.dataset, record.recipe, record.options, run_dir)
    return Plan(os.path.dirname(run_dir), record.experiment, os.path.basename(run_dir),
                record.script_recipe or record.recipe, (), (member,), {}, kept=False)


def with_device(plan: Plan, device: str) -> Plan:
    """Every member on `device` (a --device given now: where a plan runs may change, not what it runs)."""
    return dataclasses.replace(plan, members=tuple(
        dataclasses.replace(m, options=dataclasses.replace(m.options, device=device)) for m in plan.members))


def statuses(plan: Plan) -> dict:
    """{member id: its status now}: what sweep.json records."""
    return {m.id: runfolder.status(m.run_dir) for m in plan.members}


def todo(plan: Plan) -> list:
    """The members left to run: neither complete nor running in another process."""
    return [m for m in plan.members if runfolder.status(m.run_dir) not in (runfolder.COMPLETED, runfolder.RUNNING)]


def write_plan(plan: Plan, statuses: dict | None = None) -> None:
    """sweep.json; `created` and `command` stay the first launcher's."""
    path = os.path.join(plan.folder, PLAN_FILE)
    old = runfolder.read_json(path) if os.path.exists(path) else {}
    record = {"format": PLAN_FORMAT, "experiment": plan.experiment, "name": plan.name,
              "created": old.get("created", provenance.now()), "command": old.get("command", provenance.command_line()),
              "script_recipe": to_dict(plan.script_recipe),
              "sweep": [[name, list(values)] for name, values in plan.sweep], "launcher": plan.launcher,
              "members": [{"id": m.id, "dataset": m.dataset, "run_dir": m.id, "recipe": to_dict(m.recipe),
                           "options": to_dict(m.options), "status": (statuses or {}).get(m.id, runfolder.NOT_STARTED)}
                          for m in plan.members]}
    os.makedirs(plan.folder, exist_ok=True)
    runfolder.write_json(path, record)


def remove_if_unstarted(plan: Plan) -> None:
    """Drop a plan folder that holds only sweep.json while no member has a run folder: a plan
    stopped by a mistake before any training (offline, a bad data folder) leaves nothing behind."""
    if any(os.path.exists(m.run_dir) for m in plan.members):
        return
    if os.path.isdir(plan.folder) and os.listdir(plan.folder) == [PLAN_FILE]:
        os.remove(os.path.join(plan.folder, PLAN_FILE))
        os.rmdir(plan.folder)
    for folder in sorted({os.path.dirname(plan.folder)} | {os.path.dirname(m.run_dir) for m in plan.members},
                         key=len, reverse=True):
        with contextlib.suppress(OSError):  # the empty folders made for it (sweeps/, cifar_10/); others stay
            os.rmdir(folder)


def read_plan(folder: str) -> Plan:
    """sweep.json, validated: every member's recipe and options pass their fields' rules."""
    path = os.path.join(folder, PLAN_FILE)
    raw = runfolder.read_json(path)
    if not (isinstance(raw, dict) and raw.get("format") == PLAN_FORMAT and isinstance(raw.get("members"), list)):
        raise UserError(f"{path} is not a plan written by this repo")
    try:
        members = tuple(_member(folder, m, path) for m in raw["members"])
        sweep = tuple((name, tuple(values)) for name, values in raw.get("sweep", []))
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"{path} is damaged: {type(e).__name__}: {e}") from None
    if not members:
        raise UserError(f"{path} is damaged: it lists no members")
    if len({m.id for m in members}) != len(members):
        raise UserError(f"{path} is damaged: two members share one run folder")
    script_recipe = from_dict(Recipe, raw.get("script_recipe"), f"{path}: script_recipe")[0]
    return Plan(os.path.abspath(folder), str(raw.get("experiment")), str(raw.get("name")), script_recipe, sweep,
                members, raw.get("launcher") or {})


def _member(folder: str, raw: dict, path: str) -> Member:
    if raw["dataset"] not in runfolder.DATASET_FOLDERS or not isinstance(raw["id"], str):
        raise ValueError(f"member {raw.get('id')!r} names no dataset")
    if not is_member_id(raw["id"], raw["dataset"]):
        raise ValueError(f"member id {raw['id']!r} is not a run folder this plan can own (DATASET_FOLDER/NAME, or "
                         f"../../DATASET_FOLDER/NAME for an unnamed plan's runs beside it): refused, so that no "
                         f"plan writes outside its experiment's folder")
    recipe = from_dict(Recipe, raw["recipe"], f"{path}: member {raw['id']}")[0]
    options = from_dict(Options, raw["options"], f"{path}: member {raw['id']}")[0]
    return Member(raw["id"], raw["dataset"], recipe, options, os.path.normpath(os.path.join(folder, raw["id"])))


def is_member_id(member_id: str, dataset: str) -> bool:
    """What make_plan writes: DATASET_FOLDER/NAME under the plan's folder (a named plan) or
    ../../DATASET_FOLDER/NAME (an unnamed plan, whose runs sit beside a lone run's), NAME one plain part."""
    parts = member_id.split("/")
    if parts[:2] == ["..", ".."]:
        parts = parts[2:]
    return (len(parts) == 2 and parts[0] == runfolder.DATASET_FOLDERS[dataset] and parts[1] not in ("", ".", "..")
            and "\\" not in parts[1] and "\0" not in parts[1])


def same_members(a: Plan, b: Plan) -> bool:
    """Whether two plans run the same members (device aside: where a run trains may change)."""
    def key(plan):
        return [(m.id, m.dataset, to_dict(m.recipe), {**to_dict(m.options), "device": None}) for m in plan.members]
    return key(a) == key(b)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a member ended this time, as its run folder says: a runfolder status (RUNNING: another
    process trains it; QUEUED: submitted to Slurm), its error and whether its loss diverged."""
    member: Member
    status: str
    error: str | None = None
    diverged: bool = False


def outcome(member: Member) -> Outcome:
    """The member's outcome, read from its run folder."""
    status = runfolder.status(member.run_dir)
    try:
        train = runfolder.read_json(runfolder.path(member.run_dir, runfolder.TRAIN))
    except UserError:
        train = {}
    train = train if isinstance(train, dict) else {}
    error = train.get("error") if status == runfolder.FAILED else None
    return Outcome(member, status, error, bool(train.get("diverged")))


def describe(plan: Plan) -> str:
    fields = ", ".join(f"{name} in {{{', '.join(_value_words(v) for v in values)}}}" for name, values in plan.sweep)
    return (f"plan {plan.name}: {len(plan.members)} member{'s' * (len(plan.members) != 1)}"
            + (f" ({fields})" if fields else "") + f", in {plan.folder}")
