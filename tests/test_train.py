"""Schedules, the Lion update, and each experiment's config against the previous one."""
import dataclasses
import importlib
import math
import os
import subprocess
import sys

import pytest
import torch

from common.config import Recipe
from common.optimizers import build_optimizer
from common.schedules import PlateauState, after_epoch, epoch_lrs
from tests.conftest import REPO


def _curve(name, epochs=10, warmup=0, val_losses=None, steps=1, **fields):
    """The lr at the first step of each epoch (and, with steps > 1, at every step)."""
    recipe = Recipe(scheduler=name, epochs=epochs, warmup_epochs=warmup, lr=0.1, **fields)
    plateau = PlateauState()
    lrs = []
    for e in range(epochs):
        lrs += epoch_lrs(recipe, e, steps, plateau)
        after_epoch(recipe, plateau, val_losses[e] if val_losses else 1.0)
    return lrs


def test_schedule_curves():
    assert _curve("none") == pytest.approx([0.1] * 10)
    cosine = _curve("cosine")
    assert cosine[0] == pytest.approx(0.1)
    assert cosine == pytest.approx([0.05 * (1 + math.cos(math.pi * e / 10)) for e in range(10)])
    assert all(a > b for a, b in zip(cosine, cosine[1:]))
    assert _curve("step") == pytest.approx([0.1] * 5 + [0.01] * 3 + [0.001] * 2)
    assert _curve("step", step_milestones=(0.3,), step_gamma=0.5) == pytest.approx([0.1] * 3 + [0.05] * 7)
    warm = _curve("cosine", warmup=2)
    assert warm[:3] == pytest.approx([0.01, 0.055, 0.1])
    assert warm[3] < 0.1
    # plateau: halves after 3 epochs without improvement of the validation loss
    plateau = _curve("plateau", epochs=8, val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9])
    assert plateau == pytest.approx([0.1] * 6 + [0.05] * 2)
    assert _curve("plateau", epochs=8, val_losses=[1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], plateau_factor=0.25,
                  plateau_patience=1) == pytest.approx([0.1] * 4 + [0.025] * 2 + [0.00625] * 2)


def test_per_batch_schedules_move_within_an_epoch_and_per_epoch_ones_do_not():
    steps = 4
    one = _curve("onecycle", epochs=10, steps=steps)
    assert one[0] == pytest.approx(0.1 / 25) and max(one) == pytest.approx(0.1, rel=1e-3)
    assert abs(one.index(max(one)) - 0.3 * (len(one) - 1)) <= 1  # the peak at 30% of training
    assert one[-1] == pytest.approx(0.1 / 25e4) and all(a > b for a, b in zip(one[12:], one[13:]))
    cosine = _curve("cosine", epochs=3, steps=steps)
    assert cosine[:steps] == [cosine[0]] * steps  # held for a whole epoch
    warm = _curve("none", epochs=3, warmup=1, steps=steps)
    assert warm[:steps] == pytest.approx([0.01 + 0.09 * s / steps for s in range(steps)])  # warm-up per step
    assert warm[steps:] == pytest.approx([0.1] * 2 * steps)


def test_one_lion_step_equals_the_update_rule_by_hand():
    torch.manual_seed(0)
    w0 = torch.randn(5)
    grad = torch.randn(5)
    m0 = torch.randn(5)
    lr, wd, b1, b2 = 0.01, 0.1, 0.9, 0.99
    p = torch.nn.Parameter(w0.clone())
    opt = build_optimizer("lion", [p], lr, wd)
    opt.state[p]["exp_avg"] = m0.clone()  # a state as after earlier steps
    p.grad = grad.clone()
    opt.step()
    expected = w0 * (1 - lr * wd) - lr * torch.sign(b1 * m0 + (1 - b1) * grad)
    torch.testing.assert_close(p.detach(), expected)
    torch.testing.assert_close(opt.state[p]["exp_avg"], b2 * m0 + (1 - b2) * grad)


def _diff(a: str, b: str) -> set:
    ca = dataclasses.asdict(importlib.import_module(a).RECIPE)
    cb = dataclasses.asdict(importlib.import_module(b).RECIPE)
    return {k for k in ca if ca[k] != cb[k]}


def test_each_experiment_changes_only_its_recipe():
    assert _diff("ex_1", "ex_2") == {"model", "image_size", "augment", "optimizer", "scheduler", "epochs"}
    assert _diff("ex_3", "ex_4") == {"image_size", "augment", "scheduler", "epochs"}
    assert _diff("ex_4", "ex_5") == {"optimizer", "lr", "weight_decay", "epochs"}


def test_recipes_match_the_seed_report():
    from common.augment import crop_padding

    ex = {n: importlib.import_module(f"ex_{n}").RECIPE for n in range(1, 6)}
    assert (ex[1].epochs, ex[1].batch_size, ex[1].lr, ex[1].weight_decay) == (50, 128, 1e-3, 1e-4)
    assert (ex[2].image_size, crop_padding(ex[2].image_size), ex[2].optimizer, ex[2].epochs) == (128, 16, "adamw", 100)
    assert (ex[3].pretrained, ex[3].image_size, ex[3].lr, ex[3].augment, ex[3].epochs) == (True, 32, 1e-4, "none", 40)
    assert (ex[4].image_size, ex[4].epochs) == (128, 15)
    assert ex[5].optimizer == "lion" and ex[5].lr < ex[4].lr and ex[5].weight_decay > ex[4].weight_decay
    assert ex[5].epochs == 2 * ex[4].epochs


_FAULTS_SCRIPT = """
import resource, torch
from common.devices import request_huge_pages
request_huge_pages()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_step(kept):  # like a training step: a fresh 64 MiB batch, touched, while small blocks come and go
    batch = torch.ones(16 * 1024 * 1024)
    kept.append(torch.ones(1024))
    del batch
kept = []
for _ in range(5):
    one_step(kept)
before = faults()
for _ in range(10):
    one_step(kept)
print((faults() - before) // 10)
"""

_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


@pytest.mark.skipif(not os.path.exists(_THP) or "[never]" in open(_THP).read(),
                    reason="the kernel offers no transparent huge pages")
def test_huge_pages_cut_the_page_faults_of_each_new_batch():
    """Not a timing: the kernel's count of page faults per step. With 4 KiB pages each fresh 64 MiB
    block is faulted in page by page (16384 faults); on 2 MiB pages it takes ~30x fewer."""
    unset = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}  # "1" must come from our default
    faults = {}
    for setting, env in (("1", unset), ("0", {**unset, "THP_MEM_ALLOC_ENABLE": "0"})):
        faults[setting] = int(subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], cwd=REPO, env=env,
                                             capture_output=True, text=True, check=True).stdout.split()[-1])
    assert faults["0"] > 16000 and faults["1"] < 2000, faults


def test_progress_bar_shows_the_loss_of_the_step_it_redraws_at(monkeypatch):
    """The bar's loss is this step's whenever the bar redraws (here: every step), not 50 steps old."""
    import io

    from tqdm import tqdm

    from common import train
    from common.augment import Preprocess
    from common.models import TutorialCNN

    bars = []

    def progress(total, desc):
        bars.append(tqdm(total=total, desc=desc, file=io.StringIO(), mininterval=0))
        return bars[-1]

    monkeypatch.setattr(train, "_progress", progress)
    shown = []
    monkeypatch.setattr(tqdm, "set_postfix", lambda self, refresh=True, **kw: shown.append(kw["loss"]))
    losses = []
    real_cross_entropy = train.F.cross_entropy
    monkeypatch.setattr(train.F, "cross_entropy", lambda *a, **k: losses.append(real_cross_entropy(*a, **k))
                        or losses[-1])
    torch.manual_seed(0)
    model = TutorialCNN(10)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(40) % 10
    train.train_one_epoch(model, torch.optim.SGD(model.parameters(), lr=0.01), images, labels, torch.arange(40),
                          preprocess=Preprocess(32, (0.5,) * 3, (0.5,) * 3, "cpu"), batch_size=10,
                          generator=torch.Generator().manual_seed(0))
    assert shown == [f"{loss.item():.3f}" for loss in losses] and len(shown) == 4
