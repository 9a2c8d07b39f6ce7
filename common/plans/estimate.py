"""How long a plan will take (--dry-run), from epochs already measured on this machine's kind of
hardware: a member's own run folder where it has started (a plan resumed), else run folders of the
same model, image size, batch size and precision setting, on the same CPU model and vector ISA
(or GPU) at the same thread count, found under the plan's output folder and the shipped results/.
Cost scales with the training images per epoch (seconds per image, the median over matching
runs); a member with nothing to go by is not estimated, and the estimate says so."""
from __future__ import annotations

import os
import statistics

from common import REPO_ROOT, runfolder
from common.config import TRAIN_IMAGES
from common.errors import UserError


def member_threads(launcher: dict) -> int:
    """The CPU threads each member will have: the --jobs share, Slurm's --slurm-cpus, else this process's."""
    if launcher.get("kind") == "slurm":
        return int(launcher.get("slurm_cpus", 1))
    if launcher.get("jobs", 1) > 1:
        return max(1, (os.cpu_count() or 1) // launcher["jobs"])
    import torch

    return torch.get_num_threads()


def hardware() -> str:
    """This machine's label as config.json's environment gives it: the GPU, or the CPU model and ISA."""
    import torch

    from common.devices import cpu_model

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()} {torch.backends.cpu.get_cpu_capability()}"


def run_hardware(env: dict) -> str:
    return str(env["gpu"]) if env.get("gpu") else f"{env.get('cpu')} {env.get('cpu_capability')}"


def cost_key(recipe, options, dataset: str, threads, where: str) -> tuple:
    """What decides an epoch's seconds per training image (the smoke sets differ per dataset)."""
    return (recipe.model, recipe.image_size, recipe.batch_size, options.precision, options.smoke,
            dataset if options.smoke else None, threads, where)


def train_images(recipe, options, measured_split: int | None = None) -> int | None:
    if options.smoke:
        return measured_split  # the synthetic set's split: the measured run's own
    if recipe.train_subset:
        return recipe.train_subset
    return TRAIN_IMAGES - round(recipe.val_fraction * TRAIN_IMAGES)


def measured_runs(roots: list) -> dict:
    """{cost key: [(seconds per training image, training images, folder)]} of every readable run below roots."""
    found = {}
    for root in roots:
        for run_dir in runfolder.run_folders(root) if os.path.isdir(root) else ():
            try:
                record, train = runfolder.read_config(run_dir), runfolder.read_train(run_dir)
            except UserError:
                continue
            epochs = train["epochs"]
            images = sum(e.get("train_images", 0) for e in epochs)
            if not epochs or not images:
                continue
            key = cost_key(record.recipe, record.options, record.dataset, record.environment.get("torch_threads"),
                           run_hardware(record.environment))
            seconds = sum(e["epoch_time_s"] for e in epochs)
            found.setdefault(key, []).append((seconds / images, images // len(epochs), run_dir))
    return found


def estimate(members: list, launcher: dict, out: str) -> dict:
    """{"seconds": the plan's wall time or None, "members_estimated", "members", "from": folders, "basis"}."""
    threads, where = member_threads(launcher), hardware()
    measured = measured_runs([out, os.path.join(REPO_ROOT, "results")])
    total, estimated, sources = 0.0, 0, []
    for m in members:
        own = _own(m)
        if own is not None:
            seconds, source = own
        else:
            matches = measured.get(cost_key(m.recipe, m.options, m.dataset, threads, where), [])
            images = train_images(m.recipe, m.options, matches[0][1] if matches else None)
            if not matches or not images:
                continue
            seconds = statistics.median(spi for spi, _, _ in matches) * images * m.recipe.epochs
            source = matches[0][2]
        total, estimated = total + seconds, estimated + 1
        if source not in sources:
            sources.append(source)
    jobs = launcher.get("jobs", 1) if launcher.get("kind") != "slurm" else 1
    return {"seconds": total / max(1, min(jobs, estimated)) if estimated else None,
            "members_estimated": estimated, "members": len(members), "from": sources[:5],
            "basis": (f"epochs measured on {where} at {threads} thread(s), scaled by training images; "
                      f"tests and start-up not counted" + (f"; {jobs} members at once" if jobs > 1 else ""))}


def _own(member) -> tuple | None:
    """(seconds left, its folder) from the member's own epochs so far, or None before its first."""
    try:
        train = runfolder.read_train(member.run_dir)
    except UserError:
        return None
    epochs = train["epochs"]
    if not epochs:
        return None
    per_epoch = sum(e["epoch_time_s"] for e in epochs) / len(epochs)
    return per_epoch * max(0, member.recipe.epochs - len(epochs)), member.run_dir


def words(result: dict) -> str:
    from common.console import duration

    if result["seconds"] is None:
        return ("estimated time: not known yet (no epoch of this recipe measured on this hardware and thread "
                "count); after the first epoch, --dry-run again, or see docs/performance.md")
    part = "" if result["members_estimated"] == result["members"] else \
        f" for the {result['members_estimated']} of {result['members']} members measured so far"
    return f"estimated time: about {duration(result['seconds'])}{part} ({result['basis']})"
