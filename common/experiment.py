"""One experiment on one dataset, top to bottom: data -> model -> fit -> test -> run folder.

    run(experiment, recipe, options, dataset)   # a new run; returns its run folder
    resume(run_dir)                             # continue an interrupted one in place

Both are plain functions for use from Python: they install no signal handler, never exit
the process, leave stdout alone and take no lock (every command reaches them through
common.plans.member.run_member, which holds the run folder's lock). A user's mistake raises
common.errors.UserError; a stop (Ctrl-C, or a signal the caller turned into KeyboardInterrupt)
marks the run interrupted and propagates. The epoch loop lives here, in the open; the pieces
come from common.*.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
import time

import torch

from common import REPO_ROOT, checkpoints, distributed, plots, runfolder, schedules, stopping
from common.augment import Preprocess
from common.cli import resume_command
from common.config import SMOKE_SIZES, Options, Recipe, batch_size_problem, data_folder, header_words, is_resolved, knobs, to_dict
from common.data import (SPECS, CifarData, fingerprint, load_cifar, make_synthetic, stratified_split,
                         stratified_subset)
from common.devices import (Numerics, choose_numerics, describe, memory_explained, memory_format, recorded_numerics,
                            select_device)
from common.errors import Diverged, UserError, first_line
from common.files import remove_stale_temp_files
from common.metrics import classification_metrics
from common.models import MODELS, build_model, count_parameters
from common.torchfiles import load_state
from common.optimizers import build_optimizer
from common.train import epoch_order, epoch_seed, evaluate, predict, steps_per_epoch, train_one_epoch

CURVES_EVERY_S = 10.0  # seconds: the longest the curves go unredrawn while a run trains


@dataclasses.dataclass
class Session:
    """Everything one run needs in memory: its data on the device, its model and training state."""
    experiment: str
    recipe: Recipe
    options: Options
    dataset: str
    data: CifarData
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    device: torch.device
    numerics: Numerics     # precision and layout, with the reason
    state: checkpoints.TrainingState
    step_model: torch.nn.Module
    preprocess: Preprocess
    images: torch.Tensor
    labels: torch.Tensor
    summary: str

    @property
    def tag(self) -> str:
        return f"{self.experiment} {self.dataset} seed {self.options.seed}"

    @property
    def title(self) -> str:
        """The plots' titles: a --smoke run's say that its data is synthetic."""
        return self.tag + (" (synthetic data, --smoke)" if self.options.smoke else "")

    @property
    def split(self) -> dict:
        return {"train": len(self.train_idx), "val": len(self.val_idx), "test": len(self.data.test_y),
                "split_seed": self.recipe.split_seed}


def run(experiment: str, recipe: Recipe, options: Options, dataset: str, run_dir: str | None = None,
        script_recipe: Recipe | None = None, queued: tuple = (0, 0)) -> str:
    """Train on the 45k split, pick the best epoch on the 5k validation split, test it once.

    run_dir: None for a new timestamped folder under options.out; else this folder (created if
    missing; one that holds a run already is an error: resume it). queued: (runs, epochs) that
    will follow this one in this process, for the overall ETA of each epoch line.
    """
    if run_dir and os.path.isfile(runfolder.path(run_dir, runfolder.CONFIG)):
        raise UserError(f"{run_dir} holds a run already; continue it with "
                        f"{resume_command(experiment, run_dir)}")
    if not is_resolved(recipe):
        raise ValueError("resolve the recipe first: common.config.resolved_recipe(recipe) fills the model's defaults")
    with memory_explained(recipe.batch_size, recipe.image_size):
        session = prepare(experiment, recipe, options, dataset)
    if not distributed.is_main():
        return _fit_and_test(session, distributed.broadcast(None), queued)
    folder = run_dir or runfolder.create(os.path.join(options.out, runfolder.DATASET_FOLDERS[dataset]))
    os.makedirs(folder, exist_ok=True)
    runfolder.claim(folder)
    _write_new_run(session, folder, script_recipe or recipe)
    return _fit_and_test(session, distributed.broadcast(folder), queued)


def resume(run_dir: str, device: str | None = None, queued: tuple = (0, 0)) -> str:
    """Continue run_dir from its last.pth with the recipe and options it was started with
    (`device` may differ); the data and the process count must be what they were."""
    record = runfolder.read_config(run_dir)
    options = dataclasses.replace(record.options, device=device or record.options.device)
    if runfolder.is_complete(run_dir):
        raise UserError(f"{run_dir} is complete (it has {runfolder.TEST}); start a new run instead")
    checkpoint = checkpoints.load_last(run_dir, record.experiment, record.dataset, to_dict(record.recipe))
    if record.processes != distributed.world_size():
        raise UserError(f"{run_dir} was trained by {record.processes} process(es), this is "
                        f"{distributed.world_size()}: resume it as it was started (torchrun --nproc_per_node="
                        f"{record.processes}), or the numbers would change")
    with threads_kept(record.environment.get("torch_threads")):
        with memory_explained(record.recipe.batch_size, record.recipe.image_size):
            session = prepare(record.experiment, record.recipe, options, record.dataset, record=record)
        if checkpoint is not None:
            checkpoints.restore_state(run_dir, checkpoint, session.state, record.recipe.lr)
        if distributed.is_main():
            runfolder.claim(run_dir)
            remove_stale_temp_files(run_dir)  # of writes cut short by a SIGKILL
            runfolder.record_resume(run_dir, record.raw, session.state.saved_epochs, REPO_ROOT, str(session.device))
        print(f"resuming {run_dir} from {'last.pth, epoch ' + str(session.state.saved_epochs) if checkpoint else 'the start'}"
              f" ({record.recipe.epochs} epochs planned)", flush=True)
        if record.defaulted:
            print(f"  {runfolder.CONFIG} lacks {', '.join(record.defaulted)} (written by an older version): "
                  f"read with their defaults", flush=True)
        return _fit_and_test(session, run_dir, queued)


@contextlib.contextmanager
def threads_kept(started_with):
    """Resume on the CPU thread count the run started with, whatever runs it now (--jobs, Slurm, inline):
    the count decides the order of a CPU's sums, so the run's numbers and its row in compare. The
    process's own count comes back afterwards (for the next member of an inline plan)."""
    own = torch.get_num_threads()
    if not (isinstance(started_with, int) and started_with >= 1 and started_with != own):
        yield
        return
    print(f"keeping the {started_with} CPU thread(s) this run started with (this process has {own}): "
          f"the thread count decides its numbers", flush=True)
    torch.set_num_threads(started_with)
    try:
        yield
    finally:
        torch.set_num_threads(own)


def prepare(experiment: str, recipe: Recipe, options: Options, dataset: str, record=None) -> Session:
    """Data, split, device, model, optimizer and preprocessing, in this order (the seed sets the model)."""
    data = load_data(recipe, options, dataset)
    if record is not None and record.data_sha256:
        now = fingerprint(SPECS[dataset], data_folder(recipe, options))
        if now != record.data_sha256:
            raise UserError(f"the data in {data_folder(recipe, options)} changed since this run started (its test file's sha256 "
                            f"was {record.data_sha256[:12]}..., now {now[:12]}...): resume it on the data it "
                            f"started on, or start a new run")
    train_idx, val_idx = stratified_split(data.train_y, recipe.val_fraction, recipe.split_seed)
    if recipe.train_subset:  # validation and test stay as they are
        train_idx = stratified_subset(train_idx, data.train_y, recipe.train_subset, recipe.split_seed)
    if problem := batch_size_problem(recipe.batch_size, distributed.world_size(), len(train_idx)):
        raise UserError(problem)
    device = select_device(distributed.local_device_name(options.device), saved=record is not None)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: let cuDNN pick the fastest kernels
    torch.manual_seed(options.seed)
    model = build_model(recipe.model, len(data.classes), recipe.image_size, recipe.pretrained, options.weights)
    summary = model_summary(model, recipe.image_size)
    numerics = run_numerics(device, options.precision, MODELS[recipe.model], record)
    model = model.to(device, memory_format=memory_format(numerics.channels_last))
    state = checkpoints.TrainingState(model, build_optimizer(recipe.optimizer, model.parameters(), recipe.lr,
                                                           recipe.weight_decay),
                                    torch.amp.GradScaler("cuda") if numerics.precision == "fp16" else None)
    preprocess = Preprocess(recipe.image_size, recipe.mean, recipe.std, device, numerics.channels_last, recipe.augment)
    return Session(experiment, recipe, options, dataset, data, train_idx, val_idx, device, numerics, state,
                   _step_model(model, device, options.compile), preprocess, data.train_x.to(device),
                   data.train_y.to(device), summary)


def run_numerics(device: torch.device, asked: str, entry, record=None) -> Numerics:
    """The precision and layout: a resumed run's own (on the device type it started on), else --precision
    resolved for this device and model; bf16 emulated on this CPU is said once, on stderr."""
    started_on = str(record.environment.get("device", "")).split(":")[0] if record is not None else None
    numerics = recorded_numerics(record.environment, device, entry.cpu_layout) \
        if started_on == device.type else None
    numerics = numerics or choose_numerics(device, asked, entry.cpu_layout, entry.cpu_bf16_layout)
    if "emulated" in numerics.reason and not _WARNED:
        _WARNED.append("emulated bf16")
        print("warning: bf16 on this CPU is emulated (no avx512_bf16 or AMX): many times slower than fp32; "
              "--precision fp32 or auto avoids it", file=sys.stderr, flush=True)
    return numerics


_WARNED: list = []  # warnings given by this process (once each, for every member of an inline plan)


def load_data(recipe: Recipe, options: Options, dataset: str) -> CifarData:
    spec = SPECS[dataset]
    folder = data_folder(recipe, options)
    print(f"loading {dataset} from {folder} ...", flush=True)
    if options.smoke:
        make_synthetic(spec, folder, *SMOKE_SIZES[MODELS[recipe.model].smoke_data][dataset])
        return load_cifar(spec, folder, download=False)
    return load_cifar(spec, folder)


def _step_model(model, device, compile_it: bool):
    """The module the training steps call: DDP-wrapped under torchrun, compiled with --compile."""
    step_model = model
    if distributed.world_size() > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step_model) if compile_it else step_model


def _write_new_run(s: Session, run_dir: str, script_recipe: Recipe) -> None:
    """config.json, model_summary.txt and an epoch-0 last.pth: a run killed in epoch 1 can resume."""
    spec = SPECS[s.dataset]
    folder = data_folder(s.recipe, s.options)
    data = {"folder": os.path.abspath(os.path.join(folder, spec.folder)), "test_file_sha256": fingerprint(spec, folder),
            "synthetic": s.options.smoke}
    record = runfolder.config_record(
        s.experiment, s.dataset, s.recipe, s.options, script_recipe, REPO_ROOT, s.device, s.numerics,
        count_parameters(s.state.model), s.data.classes, data, s.split, distributed.world_size())
    runfolder.write_json(runfolder.path(run_dir, runfolder.CONFIG), {**record, "draws": shared_draws(s)})
    runfolder.write_text(run_dir, runfolder.SUMMARY, s.summary + "\n")
    _save(s, run_dir, improved=False)
    write_train_json(s, run_dir, runfolder.RUNNING)


def shared_draws(s: Session) -> dict:
    """Fingerprints of the random draws runs may share (config.json's `draws`): the initial weights
    (before any step) and epoch 1's data order. Runs with equal fingerprints are not independent
    replicates of what those draws decide: compare groups them."""
    import hashlib

    weights = hashlib.sha256()
    for name, tensor in sorted(s.state.model.state_dict().items()):
        weights.update(name.encode())
        weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())  # any memory layout alike
    order = epoch_order(s.train_idx, torch.Generator().manual_seed(epoch_seed(s.options.seed, 0)))
    return {"initial_weights_sha256": weights.hexdigest(),
            "epoch_1_order_sha256": hashlib.sha256(order.numpy().tobytes()).hexdigest()}


def _save(s: Session, run_dir: str, improved: bool) -> None:
    config = {"experiment": s.experiment, **to_dict(s.recipe), **to_dict(s.options)}
    checkpoints.save_state(run_dir, s.state, s.experiment, s.dataset, config, s.options.save_every, improved)


def _fit_and_test(s: Session, run_dir: str, queued: tuple = (0, 0)) -> str:
    """The epoch loop, then the test of best.pth; a stop or failure is recorded in train.json first."""
    writer = tensorboard_writer(run_dir) if s.options.tensorboard and distributed.is_main() else None
    print_header(s, run_dir)
    keep = f"; {runfolder.LAST} keeps every finished epoch: {resume_command(s.experiment, run_dir)} continues it"
    try:
        with memory_explained(s.recipe.batch_size, s.recipe.image_size, then=keep):
            fit(s, run_dir, writer, queued)
            evaluate_best_checkpoint(s, run_dir, writer)
        write_train_json(s, run_dir, runfolder.COMPLETED)  # after test.json: completed means tested
    except KeyboardInterrupt:
        with stopping.cleaning_up():  # test.json on disk: the run is complete, whatever stopped after it
            write_train_json(s, run_dir, runfolder.COMPLETED if runfolder.is_complete(run_dir) else runfolder.INTERRUPTED)
        raise
    except BaseException as e:
        write_train_json(s, run_dir, runfolder.FAILED, error=first_line(e, 1000), diverged=isinstance(e, Diverged))
        raise
    finally:
        if writer is not None:
            writer.close()
    print(f"done: {run_dir}", flush=True)
    return run_dir


def fit(s: Session, run_dir: str, writer=None, queued: tuple = (0, 0)) -> None:
    """Epochs from where the state is to the recipe's last; after each: checkpoints, train.json, curves.
    queued: (runs, epochs) this process runs after this one (the epoch line's overall ETA)."""
    recipe, state = s.recipe, s.state
    steps = steps_per_epoch(len(s.train_idx), recipe.batch_size // distributed.world_size(), distributed.world_size())
    drawn = None  # time.monotonic() when this process last drew the curves
    for epoch in range(len(state.history), recipe.epochs):
        lrs = schedules.epoch_lrs(recipe, epoch, steps, state.plateau)
        torch.manual_seed(epoch_seed(s.options.seed, epoch))  # dropout / stochastic depth
        train = train_one_epoch(s.step_model, state.optimizer, s.images, s.labels, s.train_idx,
                                preprocess=s.preprocess, batch_size=recipe.batch_size // distributed.world_size(),
                                generator=torch.Generator().manual_seed(epoch_seed(s.options.seed, epoch)),
                                lrs=lrs, dtype=s.numerics.dtype, scaler=state.scaler,
                                desc=f"{s.tag} epoch {epoch + 1}/{recipe.epochs}")
        val = evaluate(state.model, s.images, s.labels, s.val_idx, s.preprocess, s.options.eval_batch_size, s.numerics.dtype)
        if not (torch.isfinite(torch.tensor(train["loss"])) and torch.isfinite(torch.tensor(val["loss"]))):
            raise Diverged(f"the loss became {train['loss']} in epoch {epoch + 1}; stopped. last.pth "
                            f"keeps epoch {epoch}; try a lower --lr")
        schedules.after_epoch(recipe, state.plateau, val["loss"])
        best = state.best()
        improved = best is None or val["accuracy"] > best["val_accuracy"]
        state.history.append(epoch_record(epoch + 1, train, val, lrs[0]))
        if distributed.is_main():
            _save(s, run_dir, improved)
            write_train_json(s, run_dir, runfolder.RUNNING)
            if drawn is None or epoch + 1 == recipe.epochs or time.monotonic() - drawn >= CURVES_EVERY_S:
                plot_curves(s, run_dir)
                drawn = time.monotonic()
        log_epoch(s.tag, recipe.epochs, state.history[-1], improved, writer, eta(state.history, recipe.epochs, queued))
        stopping.check()  # matplotlib's finalizers may have dropped a stop signal's exception


def epoch_record(epoch: int, train: dict, val: dict, lr: float) -> dict:
    """One entry of train.json's `epochs` (accuracies in [0, 1], times in seconds; lr at the first step)."""
    return {"epoch": epoch, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr,
            "train_time_s": train["seconds"], "epoch_time_s": train["seconds"] + val["seconds"],
            "train_images": train["images"], "images_per_s": train["images"] / train["seconds"]}


def plot_curves(s: Session, run_dir: str) -> None:
    """loss.png and accuracy.png: fit redraws them after a process's first epoch, its last, and at most
    every CURVES_EVERY_S between, so a running or interrupted run shows them and fast epochs are not
    spent drawing (two figures take about 0.26 s)."""
    history = s.state.history[: s.state.saved_epochs]
    plots.plot_curves(history, "loss", "cross-entropy loss", f"{s.title}: loss", runfolder.path(run_dir, runfolder.LOSS_PNG))
    plots.plot_curves(history, "accuracy", "accuracy", f"{s.title}: accuracy",
                      runfolder.path(run_dir, runfolder.ACCURACY_PNG))


def write_train_json(s: Session, run_dir: str, status: str, error: str | None = None, diverged: bool = False) -> None:
    """train.json from the epochs last.pth holds: the history never runs ahead of the checkpoint."""
    if not distributed.is_main():
        return
    summary = runfolder.train_summary(s.experiment, s.dataset, s.recipe.epochs,
                                      s.state.history[: s.state.saved_epochs], status, error, diverged)
    try:
        runfolder.write_json(runfolder.path(run_dir, runfolder.TRAIN), summary)
    except UserError:
        if status == runfolder.RUNNING:
            raise
        # Already stopping (a full disk, say): the reason that stopped us is the one to report.


def tensorboard_writer(run_dir: str):
    """A TensorBoard SummaryWriter into the run folder; TensorBoard is optional, so say how to get it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(log_dir=run_dir)


def print_header(s: Session, run_dir: str) -> None:
    """What is about to run, before the first epoch: device, data, recipe, where it goes."""
    words = header_words(s.recipe)
    words[0] = f"{words[0]} ({count_parameters(s.state.model):,} parameters)"
    split = s.split
    n = s.numerics
    print(f"{s.tag} | {describe(s.device)} | {n.precision}, {n.layout} ({n.reason})\n"
          f"  data:   {split['train']:,} train / {split['val']:,} validation / {split['test']:,} test images"
          f"{' (synthetic, --smoke)' if s.options.smoke else ''}\n"
          f"  recipe: {', '.join(words)}\n"
          f"  run folder: {run_dir}", flush=True)


def eta(history: list, epochs: int, queued: tuple) -> str:
    """' | ETA 12m30s' for this run, and for all runs still to come in this process, at this run's mean
    epoch time (the runs after it assumed as fast per epoch; their tests not counted)."""
    from common.console import duration

    per_epoch = sum(e["epoch_time_s"] for e in history) / len(history)
    here = per_epoch * (epochs - len(history))
    runs, later = queued
    if not runs:
        return f" | ETA {duration(here)}" if len(history) < epochs else ""
    return f" | ETA {duration(here)}, all {runs + 1} runs about {duration(here + per_epoch * later)}"


def log_epoch(tag: str, epochs: int, record: dict, improved: bool, writer=None, eta_words: str = "") -> None:
    """One console line per epoch, and the same numbers to TensorBoard when asked for."""
    if writer is not None:
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            split, metric = key.split("_")
            writer.add_scalar(f"{metric}/{split}", record[key], record["epoch"])
        writer.add_scalar("lr", record["lr"], record["epoch"])
        writer.add_scalar("throughput/images_per_s", record["images_per_s"], record["epoch"])
        writer.flush()
    print(f"{tag} epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f} acc "
          f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} | "
          f"lr {record['lr']:.2e} | {record['epoch_time_s']:.1f} s, {record['images_per_s']:.0f} img/s"
          f"{eta_words}{'  *best' if improved else ''}", flush=True)


def evaluate_best_checkpoint(s: Session, run_dir: str, writer=None) -> dict:
    """The test set, used once: on the best-by-validation weights. test.json is written last."""
    distributed.barrier()  # best.pth is on disk for every process
    best = checkpoints.load_best(run_dir)
    load_state(s.state.model, best["model"], runfolder.path(run_dir, runfolder.BEST), "model")
    test_images = s.data.test_x.to(s.device)
    start = time.perf_counter()
    logits = predict(s.state.model, test_images, None, s.preprocess, s.options.eval_batch_size, s.numerics.dtype, desc="test")
    seconds = time.perf_counter() - start
    metrics = classification_metrics(logits, s.data.test_y, s.data.classes)
    result = {"experiment": s.experiment, "checkpoint": runfolder.BEST, "checkpoint_epoch": best["epoch"],
              "test_time_s": seconds, "images_per_s": len(s.data.test_y) / seconds, **metrics}
    probs = torch.softmax(logits, 1)
    if s.options.tta:
        result["tta"] = tta_metrics(s, test_images, probs)
    if distributed.is_main():
        runfolder.write_predictions(run_dir, probs.numpy(), s.data.test_y.numpy(), probs.argmax(1).numpy())
        plots.plot_test_set({"confusion": runfolder.path(run_dir, runfolder.CONFUSION_PNG),
                            "errors": runfolder.path(run_dir, runfolder.ERRORS_PNG),
                            "calibration": runfolder.path(run_dir, runfolder.CALIBRATION_PNG)},
                           s.data, probs.numpy(), metrics, s.title, writer)
        if writer is not None:
            write_hparams(writer, s, result)
        runfolder.write_json(runfolder.path(run_dir, runfolder.TEST), result)
    print(f"{s.tag} test (best epoch {best['epoch']}): accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}"
          f"  macro F1 {metrics['f1']:.4f}  AUC {metrics['auc']:.4f}  top-5 {metrics['top5_accuracy']:.4f}"
          + (f"  | TTA accuracy {result['tta']['accuracy']:.4f}" if s.options.tta else ""), flush=True)
    return result


TTA_KEYS = ("accuracy", "loss", "top5_accuracy", "precision", "recall", "f1", "auc", "auc_hard_labels", "ece")


def tta_metrics(s: Session, test_images: torch.Tensor, probs: torch.Tensor) -> dict:
    """Mean of the softmax over each image and its mirror image; reported beside the plain metrics."""
    flipped = predict(s.state.model, test_images, None, s.preprocess, s.options.eval_batch_size, s.numerics.dtype, flip=True,
                      desc="tta")
    tta = classification_metrics(((probs + torch.softmax(flipped, 1)) / 2).log(), s.data.test_y, s.data.classes)
    return {"method": "mean softmax of identity and horizontal flip", **{k: tta[k] for k in TTA_KEYS}}


def hparams(s: Session) -> dict:
    """TensorBoard's hparams: every recipe field, the options that can change the numbers, the seed."""
    values = {**to_dict(s.recipe), **{n: getattr(s.options, n) for n, (k, _) in knobs(Options).items()
                                      if k.changes_results or n == "seed"}}
    return {k: ",".join(map(str, v)) if isinstance(v, list) else ("" if v is None else v) for k, v in values.items()}


def write_hparams(writer, s: Session, result: dict) -> None:
    """The recipe and the test metrics, so TensorBoard's HParams view can compare runs."""
    metrics = {f"hparams/test_{k}": result[k] for k in ("accuracy", "loss", "f1", "top5_accuracy")}
    writer.add_hparams(hparams(s), metrics, run_name=".")


def model_summary(model: torch.nn.Module, image_size: int) -> str:
    """torchsummary's table, captured as text; run in eval mode so BatchNorm statistics stay untouched."""
    from torchsummary import summary

    was_training = model.training
    model.eval()
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), torch.no_grad():
        summary(model, (3, image_size, image_size), device="cpu")
    model.train(was_training)
    return buffer.getvalue().rstrip()
