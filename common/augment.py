"""Per-batch preprocessing on the training device: resize, random crop + flip, normalize.

Same distribution as torchvision's `RandomCrop(size, padding=p)` + `RandomHorizontalFlip()`
on each image: the padded image is cropped at an offset drawn uniformly from
{0..2p} x {0..2p} and mirrored with probability 1/2, independently per image. The
random parameters are drawn on the CPU from a seeded generator, so a run gives the same
augmentations on any device and after a resume.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class CropFlipParams:
    top: torch.Tensor     # (B,) int64, offset in the padded image, 0..2*padding
    left: torch.Tensor    # (B,) int64
    flip: torch.Tensor    # (B,) bool

    def to(self, device) -> "CropFlipParams":
        return CropFlipParams(self.top.to(device), self.left.to(device), self.flip.to(device))

    def __getitem__(self, window: slice) -> "CropFlipParams":
        return CropFlipParams(self.top[window], self.left[window], self.flip[window])


def sample_crop_flip(batch: int, padding: int, generator: torch.Generator) -> CropFlipParams:
    top = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (batch,), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    return CropFlipParams(top, left, flip)


def crop_flip(x: torch.Tensor, padding: int, params: CropFlipParams) -> torch.Tensor:
    """Crop every image at its own offset from the zero-padded batch, then flip some: one gather."""
    b, c, h, w = x.shape
    device = x.device
    padded = F.pad(x, (padding, padding, padding, padding))  # zeros, like torchvision's fill=0
    rows = params.top.to(device)[:, None] + torch.arange(h, device=device)            # (B, H)
    cols = params.left.to(device)[:, None] + torch.arange(w, device=device)           # (B, W)
    cols = torch.where(params.flip.to(device)[:, None], cols.flip(1), cols)
    flat_index = (rows[:, :, None] * (w + 2 * padding) + cols[:, None, :]).reshape(b, 1, h * w)
    out = padded.reshape(b, c, -1).gather(2, flat_index.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def resize_like_pil(x: torch.Tensor, size: int, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Bilinear resize of uint8 images to size x size, rounded to uint8.

    On the CPU this is torch's uint8 antialiased kernel, which gives the same pixels as PIL's
    Image.resize(BILINEAR), i.e. what the report's torchvision Resize did (checked in the
    tests), and is ~7x faster than resizing floats. Other devices have no uint8 kernel:
    there the float kernel's result is rounded (at most 1 grey level away).
    """
    if x.device.type == "cpu":
        return F.interpolate(x.contiguous(memory_format=memory_format), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True)
    y = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y.round_().clamp_(0, 255).to(torch.uint8)


class Preprocess:
    """uint8 (B, 3, 32, 32) on the device -> normalized float input for the model.

    Order as in the report's torchvision pipeline: Resize -> RandomCrop(pad) -> HFlip ->
    ToTensor/Normalize. Everything up to the normalization stays uint8 (4x less memory
    traffic); padding is pixel value 0, like torchvision's fill=0.
    """

    def __init__(self, image_size: int, mean, std, padding: int, device, channels_last: bool = False,
                 augment: bool = False):
        self.image_size = image_size
        self.padding = padding
        self.augment = augment  # training draws random crops + flips (common.train.train_one_epoch)
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)     # (x/255 - mean)/std == x*scale + shift
        self.shift = -mean_t / std_t
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._row_patterns = None  # (shift, scale) repeated along a channels_last row, per width

    def __call__(self, x: torch.Tensor, params: CropFlipParams | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """`out`: the previous batch's output, written over when its shape fits. A loop passes it
        once that batch is done with: a fresh 100 MB float batch (EX-2's 512 images at 128 px)
        costs the kernel zeroing new pages each time; a reused one does not."""
        if x.shape[-1] != self.image_size:
            x = resize_like_pil(x, self.image_size, self.memory_format)
        if params is not None:
            x = crop_flip(x, self.padding, params)
        if out is None or out.shape != x.shape or out.device != x.device:
            out = torch.empty(x.shape, dtype=torch.float32, device=x.device, memory_format=self.memory_format)
        out.copy_(x)  # uint8 -> float32
        return self._normalize_(out)

    def _normalize_(self, x: torch.Tensor) -> torch.Tensor:
        """x * scale + shift per channel, in place (no second full-size tensor)."""
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return torch.addcmul(self.shift, x, self.scale, out=x)
        # channels_last: broadcasting (1, 3, 1, 1) over NHWC memory runs 3 elements per inner
        # loop; as rows of W*3 values with the per-channel pattern repeated it vectorizes (2x here).
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).view(n * h, w * c)  # a view of the same memory
        if self._row_patterns is None or self._row_patterns[0].numel() != w * c:
            self._row_patterns = (self.shift.view(c).repeat(w), self.scale.view(c).repeat(w))
        torch.addcmul(self._row_patterns[0], rows, self._row_patterns[1], out=rows)
        return x
