"""One experiment on one dataset, top to bottom: data -> model -> fit -> test -> run folder.

`main(CONFIG, __doc__)` is what every ex_N.py calls. The per-epoch loop lives here, in
the open, so the recipe can be read in one place; the pieces come from common.*.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import os
import sys
import time

import torch

from common import distributed, plots, runlog
from common.augment import Preprocess
from common.config import Config, config_from_dict, parse_args
from common.data import SPECS, CifarData, DataError, fingerprint, load_cifar, make_synthetic, stratified_split
from common.metrics import classification_metrics
from common.models import WeightsError, build_model, count_parameters
from common.runlog import RunError
from common.train import (TrainingError, amp_dtype, build_optimizer, build_scheduler, epoch_seed,
                          evaluate, predict, request_huge_pages, select_device, step_scheduler, train_one_epoch,
                          use_channels_last)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USER_ERRORS = (DataError, WeightsError, RunError, TrainingError)
# --smoke: images per class (train, test) of the synthetic sets, epochs and batch size. EfficientNet
# (20M parameters, slow on a CPU) gets the "tiny" sets so that every script's smoke run stays short.
SMOKE_SIZES = {"small": {"cifar10": (60, 20), "cifar100": (6, 2)},
               "tiny": {"cifar10": (10, 5), "cifar100": (2, 1)}}
SMOKE_EPOCHS, SMOKE_BATCH = 2, 32


def smoke_kind(model: str) -> str:
    return "tiny" if model == "efficientnet_v2_s" else "small"


def main(config: Config, description: str, argv: list[str] | None = None) -> list[str]:
    """Parse the command line, run each dataset, return the run folders. User errors exit 1."""
    cfg = parse_args(config, description, argv)
    request_huge_pages()  # before the data is loaded
    distributed.setup()
    if not distributed.is_main():
        sys.stdout = open(os.devnull, "w")  # one process speaks; errors still reach stderr
    try:
        if cfg.resume:
            return [resume(cfg)]
        cfg = _resolve_defaults(cfg, config)
        datasets = ["cifar10", "cifar100"] if cfg.dataset == "all" else [cfg.dataset]
        for name in datasets:  # fail on an unwritable output folder before any training
            if distributed.is_main():
                runlog.check_writable(os.path.join(cfg.out, SPECS[name].run_folder))
        seeds = cfg.seeds or (cfg.seed,)
        return [run_dataset(dataclasses.replace(cfg, seed=seed, seeds=()), name, recipe=config)
                for seed in seeds for name in datasets]
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        distributed.cleanup()


def _resolve_defaults(cfg: Config, recipe: Config) -> Config:
    changes = {}
    if not cfg.out:
        changes["out"] = os.path.join(REPO_ROOT, cfg.experiment + ("_smoke" if cfg.smoke else ""))
    if cfg.smoke:
        changes["data_dir"] = os.path.join(cfg.data_dir, "synthetic", smoke_kind(cfg.model))
        if cfg.epochs == recipe.epochs:
            changes["epochs"] = SMOKE_EPOCHS
        if cfg.batch_size == recipe.batch_size:
            changes["batch_size"] = SMOKE_BATCH
    return dataclasses.replace(cfg, **changes)


def load_data(cfg: Config, name: str) -> CifarData:
    spec = SPECS[name]
    if cfg.smoke:
        make_synthetic(spec, cfg.data_dir, *SMOKE_SIZES[smoke_kind(cfg.model)][name])
        return load_cifar(spec, cfg.data_dir, download=False)
    return load_cifar(spec, cfg.data_dir)


def run_dataset(cfg: Config, name: str, recipe: Config | None = None, run_dir: str | None = None,
                checkpoint: dict | None = None) -> str:
    """Train on the 45k split, pick the best epoch on the 5k validation split, test it once."""
    spec = SPECS[name]
    data = load_data(cfg, name)
    train_idx, val_idx = stratified_split(data.train_y, cfg.val_fraction, cfg.split_seed)
    main_rank, world = distributed.is_main(), distributed.world_size()
    device = select_device(distributed.local_device_name(cfg.device))
    dtype = amp_dtype(device, cfg.amp)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, spec.num_classes)
    summary = model_summary(model, cfg.image_size)
    print(summary)
    channels_last = use_channels_last(device, cfg.model)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.epochs, cfg.warmup_epochs)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    step_model = model
    if world > 1:
        step_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        step_model = torch.compile(step_model)
    batch_per_process = max(2, cfg.batch_size // world)  # the global batch stays cfg.batch_size
    preprocess = Preprocess(cfg.image_size, cfg.mean, cfg.std, cfg.crop_padding(), device, channels_last)
    images, labels = data.train_x.to(device), data.train_y.to(device)

    history, best, start_epoch = [], {"epoch": 0, "val_accuracy": -1.0}, 0
    if run_dir is None and main_rank:
        run_dir = runlog.create_run_dir(os.path.join(cfg.out, spec.run_folder))
        provenance = {
            "recipe": dataclasses.asdict(recipe or cfg),  # the script's own CONFIG, before the command line
            "config": dataclasses.asdict(cfg), "dataset": name, "command": runlog.command_line(),
            "git": runlog.git_info(REPO_ROOT), "environment": runlog.environment(device),
            "seed": cfg.seed, "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "parameters": count_parameters(model), "classes": data.classes,
            "data": {"folder": os.path.abspath(os.path.join(cfg.data_dir, spec.folder)),
                     "test_file_sha256": fingerprint(spec, cfg.data_dir), "synthetic": cfg.smoke},
            "split": {"train": len(train_idx), "val": len(val_idx), "test": len(data.test_y),
                      "split_seed": cfg.split_seed}, "resumes": [], "processes": world,
        }
        runlog.write_json(os.path.join(run_dir, "config.json"), provenance)
        with open(os.path.join(run_dir, "model_summary.txt"), "w") as f:
            f.write(summary + "\n")
    run_dir = distributed.broadcast(run_dir)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if scaler is not None and checkpoint.get("scaler"):
            scaler.load_state_dict(checkpoint["scaler"])
        runlog.set_rng_state(checkpoint["rng"])
        history, best, start_epoch = list(checkpoint["history"]), dict(checkpoint["best"]), checkpoint["epoch"]
    writer = runlog.tensorboard_writer(run_dir) if cfg.tensorboard and main_rank else None
    print(f"run folder: {run_dir}", flush=True)

    def write_train_json(status: str, error: str | None = None):
        if not main_rank:
            return
        runlog.write_json(os.path.join(run_dir, "train.json"), {
            "experiment": cfg.experiment, "dataset": name, "status": status, "error": error,
            "epochs_planned": cfg.epochs, "epochs_done": len(history),
            "best_epoch": best["epoch"], "best_val_accuracy": best["val_accuracy"] if history else None,
            "train_time_s": sum(h["epoch_time_s"] for h in history),
            "images_per_s": (sum(h["train_images"] for h in history) / sum(h["train_time_s"] for h in history)
                             if history else None),
            "epochs": history})

    def state(epoch: int) -> dict:
        return {"experiment": cfg.experiment, "dataset": name, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
                "best": best, "rng": runlog.rng_state(), "config": dataclasses.asdict(cfg)}

    def save(filename: str, snapshot: dict):
        if main_rank:
            runlog.save_checkpoint(os.path.join(run_dir, filename), snapshot)

    tag = f"{cfg.experiment} {name} seed {cfg.seed}"
    if checkpoint is None:  # epoch 0: a run killed during its first epoch can still be resumed
        save("last.pth", state(0))
        write_train_json("running")
    try:
        for epoch in range(start_epoch, cfg.epochs):
            lr = optimizer.param_groups[0]["lr"]
            generator = torch.Generator().manual_seed(epoch_seed(cfg.seed, epoch))
            torch.manual_seed(epoch_seed(cfg.seed, epoch))  # dropout / stochastic depth
            train = train_one_epoch(step_model, optimizer, images, labels, train_idx, preprocess, batch_per_process,
                                    generator, cfg.augment == "crop_flip", dtype, scaler,
                                    desc=f"{tag} epoch {epoch + 1}/{cfg.epochs}")
            val = evaluate(model, images, labels, val_idx, preprocess, cfg.eval_batch_size, dtype)
            if not (torch.isfinite(torch.tensor(train["loss"])) and torch.isfinite(torch.tensor(val["loss"]))):
                raise TrainingError(f"the loss became {train['loss']} in epoch {epoch + 1}; stopped. last.pth "
                                    f"keeps epoch {len(history)}; try a lower --lr")
            step_scheduler(scheduler, val["loss"])
            history.append({"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": lr,
                            "train_time_s": train["seconds"], "epoch_time_s": train["seconds"] + val["seconds"],
                            "train_images": train["images"], "images_per_s": train["images"] / train["seconds"]})
            improved = val["accuracy"] > best["val_accuracy"]
            if improved:
                best = {"epoch": epoch + 1, "val_accuracy": val["accuracy"]}
            snapshot = state(epoch + 1)
            if improved:
                save("best.pth", snapshot)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                save(f"epoch-{epoch + 1}.pth", snapshot)
            save("last.pth", snapshot)
            write_train_json("running")
            h = history[-1]
            if writer is not None:
                for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr", "images_per_s"):
                    writer.add_scalar(key.replace("_", "/", 1) if key != "lr" else "lr", h[key], h["epoch"])
                writer.flush()
            print(f"{tag} epoch {epoch + 1:3d}/{cfg.epochs}  train loss {h['train_loss']:.4f} acc "
                  f"{h['train_accuracy']:.4f} | val loss {h['val_loss']:.4f} acc {h['val_accuracy']:.4f} | "
                  f"lr {lr:.2e} | {h['epoch_time_s']:.1f} s, {h['images_per_s']:.0f} img/s"
                  f"{'  *best' if improved else ''}", flush=True)
        write_train_json("completed")
    except KeyboardInterrupt:
        write_train_json("interrupted")
        print(f"\ninterrupted; {len(history)} epochs are saved in {run_dir}/last.pth. Resume with:\n"
              f"  python {cfg.experiment}.py --resume {run_dir}", file=sys.stderr)
        raise
    except BaseException as e:
        write_train_json("failed", error=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise

    if main_rank:
        plots.plot_curves(history, "loss", "cross-entropy loss", f"{tag}: loss", os.path.join(run_dir, "loss.png"))
        plots.plot_curves(history, "accuracy", "accuracy", f"{tag}: accuracy",
                          os.path.join(run_dir, "accuracy.png"))
    distributed.barrier()  # best.pth is on disk for every process
    test_best_checkpoint(cfg, run_dir, model, data, preprocess, device, dtype, tag, writer)
    if writer is not None:
        writer.close()
    print(f"done: {run_dir}", flush=True)
    return run_dir


def test_best_checkpoint(cfg, run_dir, model, data: CifarData, preprocess, device, dtype, tag, writer=None) -> dict:
    """The test set, used once: on the best-by-validation weights."""
    best = runlog.load_checkpoint(os.path.join(run_dir, "best.pth"))
    model.load_state_dict(best["model"])
    test_images = data.test_x.to(device)
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
                                                "auc", "ece")}}
    if not distributed.is_main():
        return result
    runlog.write_json(os.path.join(run_dir, "test.json"), result)

    probs = probs.numpy()
    labels = data.test_y.numpy()
    fig = plots.confusion_figure(metrics["confusion_matrix"], data.classes,
                                 f"{tag}: test confusion (acc {metrics['accuracy']:.4f})")
    if writer is not None:
        writer.add_figure("test/confusion_matrix", fig, close=False)
        writer.add_scalar("test/accuracy", metrics["accuracy"], best["epoch"])
    plots.save_figure(fig, os.path.join(run_dir, "confusion_matrix.png"))
    plots.plot_errors(data.test_x.numpy(), labels, probs, data.classes, f"{tag}: most confident test errors",
                      os.path.join(run_dir, "errors.png"))
    plots.plot_calibration(probs, labels, metrics["ece"], f"{tag}: reliability",
                           os.path.join(run_dir, "calibration.png"))
    line = (f"{tag} test (best epoch {best['epoch']}): accuracy {metrics['accuracy']:.4f}  loss {metrics['loss']:.4f}"
            f"  macro F1 {metrics['f1']:.4f}  AUC {metrics['auc']:.4f}  top-5 {metrics['top5_accuracy']:.4f}")
    if cfg.tta:
        line += f"  | TTA accuracy {result['tta']['accuracy']:.4f}"
    print(line, flush=True)
    return result


def resume(cli: Config) -> str:
    """Continue RUN_DIR from its last.pth, with the config it was started with."""
    run_dir = cli.resume.rstrip("/")
    config_path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(config_path):
        raise RunError(f"{run_dir} is not a run folder (no config.json)")
    try:
        saved = runlog.read_json(config_path)
        cfg = config_from_dict(saved["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{config_path} is damaged: {e}") from None
    if cfg.experiment != cli.experiment:
        raise RunError(f"{run_dir} is a run of {cfg.experiment}, not {cli.experiment}; "
                       f"resume it with python {cfg.experiment}.py --resume {run_dir}")
    last = os.path.join(run_dir, "last.pth")
    # Killed before its first checkpoint: start over in the same folder.
    checkpoint = runlog.load_checkpoint(last) if os.path.exists(last) else None
    if checkpoint is not None and (checkpoint.get("experiment") != cfg.experiment
                                   or checkpoint.get("dataset") != saved.get("dataset")):
        raise RunError(f"{run_dir}/last.pth belongs to {checkpoint.get('experiment')} "
                       f"{checkpoint.get('dataset')}, not to this run")
    runlog.check_writable(run_dir)
    cfg = dataclasses.replace(cfg, device=cli.device if cli.device != "auto" else cfg.device)
    saved["resumes"] = saved.get("resumes", []) + [{
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": runlog.command_line(), "from_epoch": checkpoint["epoch"] if checkpoint else 0,
        "git": runlog.git_info(REPO_ROOT)}]
    if distributed.is_main():
        runlog.write_json(config_path, saved)
    print(f"resuming {run_dir} after epoch {checkpoint['epoch'] if checkpoint else 0} of {cfg.epochs}", flush=True)
    return run_dataset(cfg, saved["dataset"], run_dir=run_dir, checkpoint=checkpoint)


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
