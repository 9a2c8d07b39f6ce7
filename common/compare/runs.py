"""Run folders read for comparison: every problem becomes the run's status, never an exception."""
from __future__ import annotations

import os
from dataclasses import dataclass

from common import runfolder
from common.errors import UserError, first_line

PLAN_DEPTH = 3  # a plan's members live at PLAN/cifar_10/NAME/: sweep.json is at most this many folders up

@dataclass
class Run:
    dir: str
    status: str                       # completed, running, interrupted, failed, "damaged: ...", ...
    record: runfolder.RunRecord | None = None
    train: dict | None = None
    test: dict | None = None
    plan: str | None = None           # the folder of the plan (sweep.json) the run belongs to, if any

    @property
    def complete(self) -> bool:
        return self.status == runfolder.COMPLETED


def read_run(run_dir: str) -> Run:
    """One run folder through the run folder's validators; any problem is its status, never an exception."""
    try:
        record = runfolder.read_config(run_dir)
    except UserError as e:
        return Run(run_dir, f"damaged: {first_line(e)}")
    if not os.path.exists(runfolder.path(run_dir, runfolder.TRAIN)):
        return Run(run_dir, "not started (no train.json)", record)
    try:
        train = runfolder.read_train(run_dir)
        if not runfolder.is_complete(run_dir):  # test.json is written last: without it the run is not done
            status = runfolder.status(run_dir)
            return Run(run_dir, "killed while testing (resume it)" if train["status"] == runfolder.COMPLETED
                       else status, record, train)
        if len(train["epochs"]) != record.recipe.epochs:
            return Run(run_dir, "damaged: train.json's epochs do not match config.json", record, train)
        return Run(run_dir, runfolder.COMPLETED, record, train, runfolder.read_test(run_dir))
    except UserError as e:
        return Run(run_dir, f"damaged: {first_line(e)}", record)


def plan_of(run_dir: str) -> str | None:
    """The plan folder holding this run folder (the nearest sweep.json above it), or None for a lone run."""
    folder = os.path.realpath(run_dir)
    for _ in range(PLAN_DEPTH):
        folder = os.path.dirname(folder)
        if os.path.isfile(os.path.join(folder, runfolder.PLAN_FILE)):
            return folder
    return None


def collect(paths: list) -> list:
    runs, seen = [], set()
    for root in paths:
        for run_dir in runfolder.run_folders(root):
            if os.path.realpath(run_dir) not in seen:
                seen.add(os.path.realpath(run_dir))
                run = read_run(run_dir)
                run.plan = plan_of(run_dir)
                runs.append(run)
    return runs


# --- the random draws a run may share with others ---------------------------------------------------

def initialisation(run) -> tuple:
    """What decides a run's initial weights: config.json's fingerprint, or for runs from before it was
    recorded, what the code derives them from (the seed, the model and its shape, pretrained or not)."""
    recorded = (run.record.raw.get("draws") or {}).get("initial_weights_sha256")
    if recorded:
        return ("recorded", recorded)
    r = run.record
    return ("inferred", r.options.seed, r.recipe.model, r.recipe.pretrained, r.recipe.image_size, r.dataset)


def data_order(run) -> tuple:
    """What decides a run's batch order: config.json's fingerprint of epoch 1's order, or for runs from
    before it was recorded, its seed and what its training set is drawn from."""
    recorded = (run.record.raw.get("draws") or {}).get("epoch_1_order_sha256")
    if recorded:
        return ("recorded", recorded)
    r = run.record
    return ("inferred", r.options.seed, r.dataset, r.recipe.train_subset, r.recipe.val_fraction, r.recipe.split_seed,
            r.recipe.batch_size)


def share_draws(a: Run, b: Run) -> bool:
    """Whether two runs start from the same initial weights or see the same data order: then they are
    not independent replicates, and a difference between them is one observation of a paired test."""
    return initialisation(a) == initialisation(b) or data_order(a) == data_order(b)
