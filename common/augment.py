"""Per-batch preprocessing on the training device: resize, an augmentation policy, normalize.

Policies by name (AUGMENTATIONS): each draws its own random parameters for a whole epoch
from the epoch's seeded CPU generator (`draw`), so a run gives the same augmentations on any
device and after a resume, and applies them to a batch with batched tensor ops. The training
loop only asks the policy to draw and hands each batch its window of the draw.

crop_flip: the distribution of torchvision's `RandomCrop(size, padding=p)` +
`RandomHorizontalFlip()` per image: the zero-padded image is cropped at an offset drawn
uniformly from {0..2p} x {0..2p} and mirrored with probability 1/2, independently per image.
crop_flip_cutout: then Cutout (DeVries and Taylor 2017): a square of side size/2 (16 px at
32 px) centred at a uniform pixel, clipped at the border, set to 0 after normalization, as
their reference code does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def crop_padding(image_size: int) -> int:
    """Padding in px for RandomCrop: 4 at 32 px (the usual CIFAR recipe), 16 at 128 px (the report's)."""
    return image_size // 8


def cutout_size(image_size: int) -> int:
    """Side in px of the Cutout square: 16 at 32 px (DeVries and Taylor's CIFAR-10 value), scaled with the size."""
    return image_size // 2


def sample_crop_flip(batch: int, padding: int, generator: torch.Generator) -> dict:
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return {"top": top, "left": left, "flip": flip}


def crop_flip(x: torch.Tensor, padding: int, params: dict) -> torch.Tensor:
    """Crop every image at its own offset from the zero-padded batch, then flip some: one gather."""
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros, like torchvision's fill=0
    rows = params["top"].to(device)[:, None] + torch.arange(h, device=device)            # (B, H)
    cols = params["left"].to(device)[:, None] + torch.arange(w, device=device)           # (B, W)
    cols = torch.where(params["flip"].to(device)[:, None], cols.flip(1), cols)
    flat_index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat_index.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def sample_cutout(batch: int, image_size: int, generator: torch.Generator) -> dict:
    return {"centre_y": torch.randint(0, image_size, (batch,), generator=generator),
            "centre_x": torch.randint(0, image_size, (batch,), generator=generator)}


def cutout_(x: torch.Tensor, size: int, params: dict) -> torch.Tensor:
    """Zero each image's square [cy - size/2, cy + size/2) x [cx - size/2, cx + size/2), clipped, in place."""
    b, _, h, w = x.shape
    device = x.device
    rows = torch.arange(h, device=device)
    cols = torch.arange(w, device=device)
    cy, cx = params["centre_y"].to(device)[:, None], params["centre_x"].to(device)[:, None]
    inside_rows = (rows >= cy - size // 2) & (rows < cy + size // 2)                   # (B, H)
    inside_cols = (cols >= cx - size // 2) & (cols < cx + size // 2)                   # (B, W)
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])                         # (B, H, W)
    return x.mul_(keep[:, None].to(x.dtype))


@dataclass(frozen=True)
class Policy:
    draw: Callable | None = None        # (images, image_size, generator) -> dict of per-image tensors
    on_uint8: Callable | None = None    # (x uint8 at image_size, image_size, params) -> x
    on_normalized: Callable | None = None  # (x float, normalized, image_size, params) -> x, in place


def _draw_crop_flip(n, size, generator):
    return sample_crop_flip(n, crop_padding(size), generator)


def _draw_crop_flip_cutout(n, size, generator):
    return {**sample_crop_flip(n, crop_padding(size), generator), **sample_cutout(n, size, generator)}


AUGMENTATIONS = {
    "none": Policy(),
    "crop_flip": Policy(_draw_crop_flip, lambda x, size, p: crop_flip(x, crop_padding(size), p)),
    "crop_flip_cutout": Policy(_draw_crop_flip_cutout, lambda x, size, p: crop_flip(x, crop_padding(size), p),
                               lambda x, size, p: cutout_(x, cutout_size(size), p)),
}


def window(params: dict | None, rows: slice) -> dict | None:
    """The batch's share of an epoch's draw."""
    return None if params is None else {k: v[rows] for k, v in params.items()}


def resize_like_pil(x: torch.Tensor, size: int, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Bilinear resize of uint8 images to size x size, rounded to uint8.

    On the CPU this is torch's uint8 antialiased kernel, which gives the same pixels as PIL's
    Image.resize(BILINEAR), i.e. what the report's torchvision Resize did (checked in the
    tests), on a quarter of the bytes a float resize would move. Other devices have no uint8
    kernel: there the float kernel's result is rounded (at most 1 grey level away).
    """
    if x.device.type == "cpu":
        return F.interpolate(x.contiguous(memory_format=memory_format), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class Preprocess:
    """uint8 (B, 3, 32, 32) on the device -> normalized float input for the model.

    Order as in the report's torchvision pipeline: Resize -> the policy's uint8 part (crop,
    flip) -> ToTensor/Normalize -> the policy's normalized part (Cutout). Everything up to the
    normalization stays uint8 (4x less memory traffic).
    """

    def __init__(self, image_size: int, mean, std, device, channels_last: bool = False, augment: str = "none"):
        self.image_size = image_size
        self.policy = AUGMENTATIONS[augment]
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)     # (x/255 - mean)/std == x*scale + shift
        self.shift = -mean_t / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._row_patterns = None  # (shift, scale) repeated along a channels_last row, per width

    def draw(self, images: int, generator: torch.Generator, device) -> dict | None:
        """The policy's random parameters for `images` images (an epoch), on `device`; None without augmentation."""
        if self.policy.draw is None:
            return None
        return {k: v.to(device) for k, v in self.policy.draw(images, self.image_size, generator).items()}

    def __call__(self, x: torch.Tensor, params: dict | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """`params`: this batch's window of `draw` (None: no augmentation, as in evaluation). `out`:
        the previous batch's output, written over when its shape fits (a reused buffer costs no
        fresh pages); a loop passes it once that batch is done with."""
        if x.shape[-1] != self.image_size:
            x = resize_like_pil(x, self.image_size, self.memory_format)
        if params is not None and self.policy.on_uint8 is not None:
            x = self.policy.on_uint8(x, self.image_size, params)
        if out is None or out.shape != x.shape or out.device != x.device:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=self.memory_format)
        out.copy_(x)  # uint8 -> float32
        out = self._normalize_(out)
        if params is not None and self.policy.on_normalized is not None:
            out = self.policy.on_normalized(out, self.image_size, params)
        return out

    def _normalize_(self, x: torch.Tensor) -> torch.Tensor:
        """x * scale + shift per channel, in place (no second full-size tensor)."""
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return torch.addcmul(self.shift, x, self.scale, out=x)
        # channels_last: broadcasting (1, 3, 1, 1) over NHWC memory runs 3 elements per inner
        # loop; as rows of W*3 values with the per-channel pattern repeated it vectorizes.
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).view(n * h, w * c)  # a view of the same memory
        if self._row_patterns is None or self._row_patterns[0].numel() != w * c:
            self._row_patterns = (self.shift.view(c).repeat(w), self.scale.view(c).repeat(w))
        torch.addcmul(self._row_patterns[0], rows, self._row_patterns[1], out=rows)
        return x
