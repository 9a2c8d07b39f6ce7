"""Every registry entry, whatever it is: each model builds and trains a step in both memory
layouts, each augmentation gives the same batch in both layouts and the same batch again from
the same draw. A new entry is covered the moment it is added; nothing here names one."""
import pytest
import torch

from common.augment import AUGMENTATIONS, Preprocess
from common.models import MODELS, build_model
from common.optimizers import OPTIMIZERS, build_optimizer

LAYOUTS = (torch.contiguous_format, torch.channels_last)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("classes", [10, 100])
def test_every_model_builds_and_takes_a_training_step_in_both_layouts(name, classes):
    size = max(32, MODELS[name].min_image_size)
    torch.manual_seed(0)
    images = torch.randn(4, 3, size, size)
    labels = torch.arange(4) % classes
    outputs = {}
    for layout in LAYOUTS:
        torch.manual_seed(0)
        model = build_model(name, classes, size, pretrained=False).to(memory_format=layout)
        model.train()
        logits = model(images.contiguous(memory_format=layout))
        assert logits.shape == (4, classes), name
        loss = torch.nn.functional.cross_entropy(logits, labels)
        loss.backward()
        assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters()
                                            if p.grad is not None), name
        outputs[layout] = logits.detach()
    # the layout is a speed choice (a registry fact), never a change in what the model computes
    torch.testing.assert_close(outputs[LAYOUTS[0]], outputs[LAYOUTS[1]], atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("size", [32, 64])
def test_every_augmentation_is_the_same_in_both_layouts_and_repeats_from_its_draw(name, size):
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    results = []
    for layout in LAYOUTS:
        preprocess = Preprocess(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cpu", layout == torch.channels_last, name)
        for _ in range(2):  # the same epoch seed twice: the same draw, the same batch
            params = preprocess.draw(len(images), torch.Generator().manual_seed(7), "cpu")
            out = preprocess(images, params)
            assert out.shape == (6, 3, size, size) and out.dtype == torch.float32 and torch.isfinite(out).all()
            assert out.is_contiguous(memory_format=layout)
            results.append(out)
    for other in results[1:]:
        assert torch.equal(results[0], other), name
    unaugmented = Preprocess(size, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "cpu", False, name)(images)
    assert (AUGMENTATIONS[name].draw is None) == torch.equal(results[0], unaugmented), name


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_lowers_a_loss(name):
    torch.manual_seed(0)
    weights = torch.nn.Parameter(torch.ones(8))
    optimizer = build_optimizer(name, [weights], 1e-2, 1e-4)
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = (weights ** 2).sum()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], name



def test_every_model_entry_names_valid_cpu_layouts():
    from common.devices import LAYOUTS as NAMES

    for name, entry in MODELS.items():
        assert entry.cpu_layout in NAMES, name
        assert entry.cpu_bf16_layout in NAMES + (None,), name
