"""The batched on-device pipeline against torchvision's per-image transforms."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from scipy.stats import chisquare

from common.augment import AUGMENTATIONS, Preprocess, crop_flip, cutout_size, sample_crop_flip
from common.models import TutorialCNN


def _reference(images_uint8, params, padding, size, mean, std):
    """The seed's pipeline, one image at a time: PIL Resize(BILINEAR) -> pad + crop -> hflip -> ToTensor -> Normalize."""
    from PIL import Image

    out = []
    for i, img in enumerate(images_uint8):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        if size != pil.width:
            pil = pil.resize((size, size), Image.BILINEAR)
        img = TF.pil_to_tensor(pil)
        if params is not None:
            img = TF.pad(img, [padding] * 4, fill=0)
            img = TF.crop(img, int(params["top"][i]), int(params["left"][i]), size, size)
            if params["flip"][i]:
                img = TF.hflip(img)
        out.append(TF.normalize(img.float() / 255.0, mean, std))
    return torch.stack(out)


@pytest.mark.parametrize("size,padding", [(32, 4), (64, 8), (128, 16)])
def test_fast_pipeline_matches_per_image_reference(size, padding):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g)
    params = sample_crop_flip(16, padding, g)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    ref = _reference(images, params, padding, size, mean, std)
    for channels_last in (False, True):
        fast = Preprocess(size, mean, std, "cpu", channels_last, "crop_flip")(images, params)
        torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)  # the same pixels as PIL, not just close
        # and without augmentation (the evaluation path)
        torch.testing.assert_close(Preprocess(size, mean, std, "cpu", channels_last, "crop_flip")(images),
                                   _reference(images, None, padding, size, mean, std), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_an_output_buffer_is_written_over_only_when_it_fits(channels_last):
    g = torch.Generator().manual_seed(3)
    first, second = (torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=g) for _ in range(2))
    preprocess = Preprocess(64, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "cpu", channels_last)
    expected = preprocess(second)
    buffer = preprocess(first)
    reused = preprocess(second, out=buffer)
    assert reused.data_ptr() == buffer.data_ptr() and torch.equal(reused, expected)  # bit for bit
    assert reused.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    smaller = preprocess(second[:5], out=buffer)  # the last, smaller batch gets its own tensor
    assert smaller.data_ptr() != buffer.data_ptr() and torch.equal(smaller, expected[:5])


def test_same_loss_on_same_batch_and_augmentation():
    torch.manual_seed(0)
    model = TutorialCNN(10).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)
    params = sample_crop_flip(32, 4, g)
    fast = F.cross_entropy(model(Preprocess(32, (0.5,) * 3, (0.5,) * 3, "cpu", augment="crop_flip")(images, params)),
                           labels)
    ref = F.cross_entropy(model(_reference(images, params, 4, 32, (0.5,) * 3, (0.5,) * 3)), labels)
    assert fast.item() == pytest.approx(ref.item(), abs=1e-6)


def test_crop_offsets_and_flips_are_uniform_and_per_image():
    g = torch.Generator().manual_seed(0)
    n, padding = 90_000, 4
    p = sample_crop_flip(n, padding, g)
    for offsets in (p["top"], p["left"]):
        counts = torch.bincount(offsets, minlength=2 * padding + 1).numpy()
        assert len(counts) == 9
        assert chisquare(counts).pvalue > 1e-3  # uniform over {0..8}
    assert abs(p["flip"].float().mean().item() - 0.5) < 0.01
    # independent per image: offsets of one image say nothing about the next, nor top about left
    assert abs(np.corrcoef(p["top"][:-1], p["top"][1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(p["top"], p["left"])[0, 1]) < 0.02
    # and a batch really gets different crops: images differ after augmenting identical inputs
    same = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8).expand(64, -1, -1, -1).contiguous()
    out = crop_flip(same, padding, sample_crop_flip(64, padding, g))
    assert len({o.numpy().tobytes() for o in out}) > 32


def test_crop_without_shift_or_flip_is_identity_and_flip_mirrors():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    centre = {"top": torch.tensor([2, 2]), "left": torch.tensor([2, 2]), "flip": torch.tensor([False, True])}
    out = crop_flip(x, 2, centre)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[1].flip(-1))
    corner = {"top": torch.tensor([0]), "left": torch.tensor([0]), "flip": torch.tensor([False])}
    out = crop_flip(x[:1], 2, corner)
    assert torch.equal(out[0, :, :2, :], torch.zeros(3, 2, 8)) and torch.equal(out[0, :, 2:, 2:], x[0, :, :6, :6])


def _cutout_reference(img: torch.Tensor, centre_y: int, centre_x: int, length: int) -> torch.Tensor:
    """DeVries and Taylor's Cutout (github.com/uoguelph-mlrg/Cutout, util/cutout.py), one image:
    a mask of ones with a length x length square of zeros, clipped at the border, multiplied in."""
    h, w = img.shape[1:]
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(centre_y - length // 2, 0, h), np.clip(centre_y + length // 2, 0, h)
    x1, x2 = np.clip(centre_x - length // 2, 0, w), np.clip(centre_x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * torch.from_numpy(mask).expand_as(img)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_cutout_is_bit_exact_against_the_per_image_reference(size, channels_last):
    g = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8, generator=g)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    with_cutout = Preprocess(size, mean, std, "cpu", channels_last, "crop_flip_cutout")
    params = with_cutout.draw(len(images), torch.Generator().manual_seed(6), "cpu")
    assert cutout_size(size) == size // 2 and cutout_size(32) == 16  # DeVries and Taylor's 16 px at 32 px
    # the same crops and flips without Cutout, then Cutout one image at a time
    cropped = Preprocess(size, mean, std, "cpu", channels_last, "crop_flip")(images, params)
    reference = torch.stack([_cutout_reference(img, int(params["centre_y"][i]), int(params["centre_x"][i]),
                                               cutout_size(size)) for i, img in enumerate(cropped)])
    batched = with_cutout(images, params)
    assert batched.dtype == reference.dtype and torch.equal(batched, reference)
    assert (batched.view(torch.int32) == reference.contiguous().view(torch.int32)).all()  # bit for bit, signs of 0 too
    holes = (batched == 0).all(1).sum((1, 2))
    assert holes.max() == cutout_size(size) ** 2 and holes.min() > 0  # whole squares, and clipped ones


def test_cutout_centres_are_uniform_and_follow_the_crop_draw():
    g = torch.Generator().manual_seed(7)
    draw = AUGMENTATIONS["crop_flip_cutout"].draw(90_000, 32, g)
    for centres in (draw["centre_y"], draw["centre_x"]):
        counts = torch.bincount(centres, minlength=32).numpy()
        assert len(counts) == 32 and chisquare(counts).pvalue > 1e-3
    # the crop and flip part is drawn first, exactly as crop_flip draws it: same seed, same crops
    plain = AUGMENTATIONS["crop_flip"].draw(90_000, 32, torch.Generator().manual_seed(7))
    assert all(torch.equal(draw[k], plain[k]) for k in ("top", "left", "flip"))
