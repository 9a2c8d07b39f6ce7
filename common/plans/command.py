"""The command's plan: --resume's (a plan folder, or a run folder's one-member plan) or the one the
command line makes, with the --device and launcher flags given now applied to it once (common.launch)."""
from __future__ import annotations

import dataclasses
import os

from common import distributed
from common.cli import resume_command
from common.errors import UserError
from common.plans.plan import PLAN_FILE, Plan, from_run_folder, make_plan, read_plan, same_members, with_device
from common.runfolder import stamp

LAUNCHER_FIELDS = {"kind": "launcher", **{name: name for name in ("jobs", "slurm_partition", "slurm_time", "slurm_gpus",
                                                                  "slurm_cpus", "slurm_parallel")}}  # sweep.json: Launch


def of_command(command) -> Plan:
    """--resume's plan (a plan folder, or a run folder's one-member plan), or the command's own; with the
    device and launcher flags given now applied to it, once."""
    the_plan = _resumed(command) if command.launch.resume else _made(command)
    if "device" in command.given:
        the_plan = with_device(the_plan, command.options.device)
    return dataclasses.replace(the_plan, launcher=launcher_settings(the_plan, command))


def _resumed(command) -> Plan:
    target = os.path.abspath(command.launch.resume)
    kept = os.path.isfile(os.path.join(target, PLAN_FILE))
    the_plan = read_plan(target) if kept else from_run_folder(target)
    if the_plan.experiment != command.experiment:
        raise UserError(f"{target} is a {'plan' if kept else 'run'} of {the_plan.experiment}, not {command.experiment}; "
                        f"continue it with {resume_command(the_plan.experiment, target)}")
    return the_plan


def _made(command) -> Plan:
    """The command's plan; an unnamed one gets the start time (rank 0's, under torchrun), and a suffix if
    that is taken. A kept plan named like one on disk continues it, if it has the same members."""
    now = distributed.broadcast(stamp())
    for n in range(100):
        the_plan = make_plan(command, now if n == 0 else f"{now}_{n}")
        taken = os.path.exists(the_plan.folder) or any(os.path.exists(m.run_dir) for m in the_plan.members)
        if command.launch.name or not distributed.broadcast(taken):
            break
    else:
        raise UserError(f"could not name a plan under {command.options.out}")
    if not (the_plan.kept and os.path.isfile(os.path.join(the_plan.folder, PLAN_FILE))):
        return the_plan
    stored = read_plan(the_plan.folder)
    if not same_members(stored, the_plan):
        raise UserError(f"{the_plan.folder} holds another plan named {the_plan.name!r} (other members); give "
                        f"another --name, or continue it with {resume_command(command.experiment, the_plan.folder)}")
    return stored


def launcher_settings(the_plan: Plan, command) -> dict:
    """The flags given now, else what the plan's last launcher used, else the defaults; and what the
    plan's launcher recorded besides (the Slurm array tasks submitted so far: common.plans.slurm)."""
    stored = the_plan.launcher
    return {**stored, **{key: getattr(command.launch, name) if name in command.given else
                         stored.get(key, getattr(command.launch, name)) for key, name in LAUNCHER_FIELDS.items()}}
