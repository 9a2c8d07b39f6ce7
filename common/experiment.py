"""One experiment on one dataset, top to bottom: data -> model -> fit -> test -> run folder.

`main(CONFIG, __doc__)` is what every ex_N.py calls. The per-epoch loop lives here, in
the open, so the recipe can be read in one place; the pieces come from common.*.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import sys
import time

import torch

from common import distributed, plots, runlog
from common.augment import Preprocess
from common.config import SMOKE_SIZES, Config, load_run_record, resolve, smoke_kind
from common.data import SPECS, CifarData, fingerprint, load_cifar, make_synthetic, stratified_split
from common.devices import (amp_dtype, describe, memory_format, request_huge_pages, select_device,
                            use_channels_last)
from common.errors import UserError, first_line
from common.metrics import classification_metrics
from common.models import build_model, count_parameters
from common.train import build_optimizer, build_scheduler, epoch_seed, evaluate, predict, step_scheduler, train_one_epoch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Stopped(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM (kill, Slurm, Kubernetes): stop, mark the run interrupted, exit 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals() -> None:
    def stop(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):  # stopping already: a second signal must not cut the clean-up short
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)


def main(config: Config, description: str, argv: list[str] | None = None) -> list[str]:
    """Parse the command line, run each dataset, return the run folders. User errors exit 1."""
    cfg = resolve(config, description, argv, REPO_ROOT)  # usage errors exit 2 here, before anything exists
    request_huge_pages()  # before the data is loaded
    _stop_on_signals()
    distributed.setup()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one process speaks; errors still reach stderr
    try:
        if cfg.resume:
            return [resume(cfg)]
        datasets = ["cifar10", "cifar100"] if cfg.dataset == "all" else [cfg.dataset]
        for name in datasets:  # fail on an unwritable output folder before any training
            if distributed.is_main():
                runlog.check_writable(os.path.join(cfg.out, SPECS[name].run_folder))
        return [run_dataset(dataclasses.replace(cfg, seed=seed, seeds=()), name, recipe=config)
                for seed in cfg.seeds or (cfg.seed,) for name in datasets]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Stopped as e:
        sys.exit(128 + e.signum)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
    finally:
        distributed.cleanup()


def load_data(cfg: Config, name: str) -> CifarData:
    spec = SPECS[name]
    print(f"loading {name} from {cfg.data_dir} ...", flush=True)
    if cfg.smoke:
        make_synthetic(spec, cfg.data_dir, *SMOKE_SIZES[smoke_kind(cfg.model)][name])
        return load_cifar(spec, cfg.data_dir, download=False)
    return load_cifar(spec, cfg.data_dir)


def run_dataset(cfg: Config, name: str, recipe: Config | None = None, resume_from: tuple | None = None) -> str:
    """Train on the 45k split, pick the best epoch on the 5k validation split, test it once.

    resume_from: (run_dir, its config.json, its last.pth or None) to continue a run in place.
    """
    spec = SPECS[name]
    data = load_data(cfg, name)
    train_idx, val_idx = stratified_split(data.train_y, cfg.val_fraction, cfg.split_seed)
    if cfg.batch_size > len(train_idx):
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(train_idx)}-image training split")
    device = select_device(distributed.local_device_name(cfg.device))
    dtype = amp_dtype(device, cfg.amp)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: let cuDNN pick the fastest kernels
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec.num_classes)
    summary = model_summary(model, cfg.image_size)
    channels_last = use_channels_last(device, cfg.model)
    model = model.to(device, memory_format=memory_format(channels_last))
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    state = runlog.TrainingState(model, optimizer, build_scheduler(cfg.scheduler, optimizer, cfg.epochs,
                                                                   cfg.warmup_epochs),
                                 torch.amp.GradScaler("cuda") if dtype == torch.float16 else None)
    step_model = _step_model(model, device, cfg.compile)
    preprocess = Preprocess(cfg.image_size, cfg.mean, cfg.std, cfg.crop_padding(), device, channels_last,
                            augment=cfg.augment == "crop_flip")
    images, labels = data.train_x.to(device), data.train_y.to(device)
    split = {"train": len(train_idx), "val": len(val_idx), "test": len(data.test_y), "split_seed": cfg.split_seed}
    run_dir = _open_run_folder(cfg, recipe, name, state, resume_from, data, split, device, summary)
    writer = runlog.tensorboard_writer(run_dir) if cfg.tensorboard and distributed.is_main() else None
    print_header(cfg, name, device, split, count_parameters(model), run_dir)
    tag = f"{cfg.experiment} {name} seed {cfg.seed}"
    try:
        for epoch in range(len(state.history), cfg.epochs):
            lr = optimizer.param_groups[0]["lr"]
            torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout / stochastic depth
            train = train_one_epoch(step_model, optimizer, images, labels, train_idx, preprocess=preprocess,
                                    batch_size=max(2, cfg.batch_size // distributed.world_size()),
                                    generator=torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch)),
                                    dtype=dtype, scaler=state.scaler, desc=f"{tag} epoch {epoch + 1}/{cfg.epochs}")
            val = evaluate(model, images, labels, val_idx, preprocess, cfg.eval_batch_size, dtype)
            if not (torch.isfinite(torch.tensor(train["loss"])) and torch.isfinite(torch.tensor(val["loss"]))):
                raise UserError(f"the loss became {train['loss']} in epoch {epoch + 1}; stopped. last.pth "
                                f"keeps epoch {epoch}; try a lower --lr")
            step_scheduler(state.scheduler, val["loss"])
            state.history.append(runlog.epoch_record(epoch + 1, train, val, lr))
            improved = val["accuracy"] > state.best["val_accuracy"]
            if improved:
                state.best = {"epoch": epoch + 1, "val_accuracy": val["accuracy"]}
            if distributed.is_main():
                runlog.save_training_state(run_dir, state, cfg.experiment, name, dataclasses.asdict(cfg),
                                           cfg.save_every, improved)
                write_train_json(run_dir, cfg, name, state, "running")
            log_epoch(tag, cfg.epochs, state.history[-1], improved, writer)
        write_train_json(run_dir, cfg, name, state, "completed")
    except KeyboardInterrupt:
        write_train_json(run_dir, cfg, name, state, "interrupted")
        print(f"\ninterrupted; {len(state.history)} epochs are saved in {run_dir}/last.pth. Resume with:\n"
              f"  python {_script_path(cfg.experiment)} --resume {run_dir}", file=sys.stderr)
        raise
    except BaseException as e:
        write_train_json(run_dir, cfg, name, state, "failed", error=first_line(e, 1000))
        raise
    if distributed.is_main():
        plots.plot_curves(state.history, "loss", "cross-entropy loss", f"{tag}: loss", os.path.join(run_dir, "loss.png"))
        plots.plot_curves(state.history, "accuracy", "accuracy", f"{tag}: accuracy",
                          os.path.join(run_dir, "accuracy.png"))
    distributed.barrier()  # best.pth is on disk for every process
    test_best_checkpoint(cfg, run_dir, model, data, preprocess, dtype, tag, writer)
    if writer is not None:
        writer.close()
    print(f"done: {run_dir}", flush=True)
    return run_dir


def _step_model(model, device, compile_it: bool):
    """The module the training steps call: DDP-wrapped under torchrun, compiled with --compile."""
    step_model = model
    if distributed.world_size() > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(step_model) if compile_it else step_model


def _open_run_folder(cfg, recipe, name, state, resume_from, data, split, device, summary) -> str:
    """A new run folder with config.json and model_summary.txt, or the resumed one with its state restored."""
    spec = SPECS[name]
    if resume_from is not None:
        run_dir, record, checkpoint = resume_from
        if checkpoint is not None:  # checked and loaded before anything in the folder changes
            runlog.restore_training_state(os.path.join(run_dir, "last.pth"), checkpoint, state)
        if distributed.is_main():
            runlog.remove_stale_temp_files(run_dir)
            runlog.record_resume(run_dir, record, len(state.history), REPO_ROOT)
        return run_dir
    run_dir = None
    if distributed.is_main():
        run_dir = runlog.create_run_dir(os.path.join(cfg.out, spec.run_folder))
        data_record = {"folder": os.path.abspath(os.path.join(cfg.data_dir, spec.folder)),
                       "test_file_sha256": fingerprint(spec, cfg.data_dir), "synthetic": cfg.smoke}
        runlog.write_json(os.path.join(run_dir, "config.json"), runlog.provenance(
            dataclasses.asdict(cfg), dataclasses.asdict(recipe or cfg), name, REPO_ROOT, device,
            count_parameters(state.model), data.classes, data_record, split, distributed.world_size()))
        runlog.write_text(os.path.join(run_dir, "model_summary.txt"), summary + "\n")
        runlog.save_training_state(run_dir, state, cfg.experiment, name, dataclasses.asdict(cfg), 0, False)
        write_train_json(run_dir, cfg, name, state, "running")  # epoch 0: a run killed in epoch 1 can resume
    return distributed.broadcast(run_dir)


def write_train_json(run_dir: str, cfg: Config, name: str, state, status: str, error: str | None = None) -> None:
    if not distributed.is_main():
        return
    summary = runlog.train_summary(cfg.experiment, name, cfg.epochs, state.history, state.best, status, error)
    try:
        runlog.write_json(os.path.join(run_dir, "train.json"), summary)
    except UserError:
        if status == "running":
            raise
        # Already stopping (a full disk, say): the reason that stopped us is the one to report.


def print_header(cfg: Config, name: str, device, split: dict, parameters: int, run_dir: str) -> None:
    """What is about to run, before the first epoch: device, data, recipe, where it goes."""
    schedule = cfg.scheduler + (f" after {cfg.warmup_epochs} warm-up epochs" if cfg.warmup_epochs else "")
    print(f"{cfg.experiment} on {name}, seed {cfg.seed} | {describe(device)}\n"
          f"  data:   {split['train']:,} train / {split['val']:,} validation / {split['test']:,} test images"
          f"{' (synthetic, --smoke)' if cfg.smoke else ''}\n"
          f"  recipe: {cfg.model} ({parameters:,} parameters), {cfg.epochs} epoch{'s' * (cfg.epochs != 1)}, "
          f"batch {cfg.batch_size}, "
          f"{cfg.optimizer} lr {cfg.lr:g} weight decay {cfg.weight_decay:g}, schedule {schedule}, "
          f"{cfg.image_size} px, augmentation {cfg.augment}\n"
          f"  run folder: {run_dir}", flush=True)


def log_epoch(tag: str, epochs: int, record: dict, improved: bool, writer=None) -> None:
    """One console line per epoch, and the same numbers to TensorBoard when asked for."""
    if writer is not None:
        for key, value in record.items():
            if key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
                split, metric = key.split("_")
                writer.add_scalar(f"{metric}/{split}", value, record["epoch"])
        writer.add_scalar("lr", record["lr"], record["epoch"])
        writer.add_scalar("throughput/images_per_s", record["images_per_s"], record["epoch"])
        writer.flush()
    print(f"{tag} epoch {record['epoch']:3d}/{epochs}  train loss {record['train_loss']:.4f} acc "
          f"{record['train_accuracy']:.4f} | val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.4f} | "
          f"lr {record['lr']:.2e} | {record['epoch_time_s']:.1f} s, {record['images_per_s']:.0f} img/s"
          f"{'  *best' if improved else ''}", flush=True)


def test_best_checkpoint(cfg, run_dir, model, data: CifarData, preprocess, dtype, tag, writer=None) -> dict:
    """The test set, used once: on the best-by-validation weights."""
    best = runlog.load_checkpoint(os.path.join(run_dir, "best.pth"))
    runlog.load_into(model, best["model"], os.path.join(run_dir, "best.pth"), "model")
    test_images = data.test_x.to(next(model.parameters()).device)
    start = time.perf_counter()
    logits = predict(model, test_images, None, preprocess, cfg.eval_batch_size, dtype, desc="test")
    seconds = time.perf_counter() - start
    metrics = classification_metrics(logits, data.test_y, data.classes)
    result = {"experiment": cfg.experiment, "checkpoint": "best.pth", "checkpoint_epoch": best["epoch"],
              "test_time_s": seconds, "images_per_s": len(data.test_y) / seconds, **metrics}
    probs = torch.softmax(logits, 1)
    if cfg.tta:
        # Mean of the softmax over each image and its mirror image; reported beside the plain metrics.
        flipped = predict(model, test_images, None, preprocess, cfg.eval_batch_size, dtype, flip=True, desc="tta")
        tta = classification_metrics(((probs + torch.softmax(flipped, 1)) / 2).log(), data.test_y, data.classes)
        result["tta"] = {"method": "mean softmax of identity and horizontal flip",
                         **{k: tta[k] for k in ("accuracy", "loss", "top5_accuracy", "precision", "recall", "f1",
                                                "auc", "auc_hard_labels", "ece")}}
    if not distributed.is_main():
        return result
    runlog.write_predictions(os.path.join(run_dir, "predictions.npz"), probs.numpy(), data.test_y.numpy(),
                             probs.argmax(1).numpy())
    runlog.write_json(os.path.join(run_dir, "test.json"), result)
    plots.test_figures(run_dir, data, probs.numpy(), metrics, tag, writer)
    if writer is not None:
        write_hparams(writer, cfg, result)
    line = (f"{tag} test (best epoch {best['epoch']}): accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}"
            f"  macro F1 {metrics['f1']:.4f}  AUC {metrics['auc']:.4f}  top-5 {metrics['top5_accuracy']:.4f}")
    if cfg.tta:
        line += f"  | TTA accuracy {result['tta']['accuracy']:.4f}"
    print(line, flush=True)
    return result


HPARAM_FIELDS = ("model", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "scheduler", "warmup_epochs",
                 "image_size", "augment", "pretrained", "seed", "smoke")


def write_hparams(writer, cfg: Config, result: dict) -> None:
    """The recipe and the test metrics, so TensorBoard's HParams view can compare runs."""
    hparams = {k: getattr(cfg, k) for k in HPARAM_FIELDS}
    metrics = {f"hparams/test_{k}": result[k] for k in ("accuracy", "loss", "f1", "top5_accuracy")}
    writer.add_hparams(hparams, metrics, run_name=".")


def resume(cli: Config) -> str:
    """Continue RUN_DIR from its last.pth, with the config it was started with."""
    run_dir = cli.resume.rstrip("/") or cli.resume
    cfg, record = load_run_record(run_dir)
    if cfg.experiment != cli.experiment:
        raise UserError(f"{run_dir} is a run of {cfg.experiment}, not {cli.experiment}; "
                        f"resume it with python {_script_path(cfg.experiment)} --resume {run_dir}")
    if os.path.exists(os.path.join(run_dir, "test.json")):
        raise UserError(f"{run_dir} is complete (it has test.json); start a new run instead")
    last = os.path.join(run_dir, "last.pth")
    # Killed before its first checkpoint: start over in the same folder.
    checkpoint = runlog.load_checkpoint(last) if os.path.exists(last) else None
    if checkpoint is not None:  # before the data is loaded: a damaged last.pth fails in a second
        runlog.check_training_state(last, checkpoint, cfg.experiment, record["dataset"], cfg.epochs)
    runlog.check_writable(run_dir)
    cfg = dataclasses.replace(cfg, device=cli.device if cli.device != "auto" else cfg.device)
    print(f"resuming {run_dir} from {'last.pth' if checkpoint else 'the start'} ({cfg.epochs} epochs planned)",
          flush=True)
    return run_dataset(cfg, record["dataset"], resume_from=(run_dir, record, checkpoint))


def _script_path(experiment: str) -> str:
    """How to name ex_N.py in a command: relative when the repo is the current folder."""
    path = os.path.join(REPO_ROOT, experiment + ".py")
    return os.path.relpath(path) if os.path.abspath(os.getcwd()) == REPO_ROOT else path


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
