"""Batched augmentation and normalisation of uint8 image tensors, on whatever device they live on.

Images arrive as uint8 (B, 3, h, w) at their cached size and leave as normalised float
(B, 3, S, S) at the training size. Doing this as a handful of batched tensor ops on the training
device, instead of per-sample PIL transforms in DataLoader workers, is what keeps the model busy.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .options import AUGMENT_LEVELS


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # the same float ops as torchvision's ToTensor + Normalize, so eval matches timm's transform bit for bit
    return images.float().div(255).sub(mean.view(1, -1, 1, 1)).div(std.view(1, -1, 1, 1))


class BatchAugment:
    """`none`: resize only. `basic`: random translation (pad-and-crop) + horizontal flip.
    `strong`: basic + random zoom-in + TrivialAugment colour/shape ops.
    `random_erase`, at any level but `none`: the probability that an image gets one box of noise (timm's
    RandomErasing, i.e. Cutout with noise), which hides a part of the object so the model cannot lean on any
    single one.
    `crop_scale` < 1, at any level but `none`, for images cached larger than the output: each image is a random
    crop of `crop_scale` to all of its area, aspect ratio 3/4 to 4/3 (timm's RandomResizedCrop, clamped to the
    image where timm would retry), flipped or not, in place of the shift and the zoom."""

    def __init__(self, level: str, out_size: int, mean, std, max_shift: float = 0.125, trivial_group: int = 8,
                 random_erase: float = 0.0, crop_scale: float = 1.0):
        if level not in AUGMENT_LEVELS:
            raise ValueError(f"augment level must be one of {AUGMENT_LEVELS}, got {level!r}")
        self.level, self.out_size = level, out_size
        self.mean, self.std = torch.as_tensor(mean), torch.as_tensor(std)
        self.max_shift = max_shift  # fraction of the image; 0.125 is the classic 4 px on CIFAR's 32 px
        self.trivial_group = trivial_group
        self.trivial = v2.TrivialAugmentWide()
        # per-pixel noise in normalised units, like the rest of the image; after the resize, so that boxes have
        # sharp edges at the training size. One implementation on every device, the fixed-shape one (RandomErase):
        # on a CPU timm's per-image slices are cheaper (11 against 53 ms for 256 images at 96 px, about 2.5 % of a
        # training step there), which is not worth a second path whose draws differ
        self.erase = RandomErase(random_erase) if random_erase > 0 else None
        self.crop_scale = crop_scale

    def __call__(self, images: torch.Tensor, out_size: int | None = None) -> torch.Tensor:
        """`out_size` overrides the output size for this batch (progressive resizing)."""
        size = out_size or self.out_size
        if self.level == "strong":
            # TrivialAugment picks one op per call for the whole tensor; calling it per group of a few
            # images gives each group its own op at a fraction of the cost of a per-image loop.
            images = torch.cat([self.trivial(group) for group in images.split(self.trivial_group)])
        mean, std = self.mean.to(images.device), self.std.to(images.device)
        x = normalize(images, mean, std)
        if self.level == "none":
            return self._resize(x, size)
        x = self._random_resized_crop(x, size) if self.crop_scale < 1 else self._random_affine(x, size)
        if self.erase is not None:
            x = self.erase(x)
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
        if x.shape[-1] == size and x.shape[-2] == size:
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)

    def _random_affine(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Shift, flip and (strong) zoom every image differently, and resize, in one grid_sample."""
        if x.shape[-1] > size:
            # shrinking (progressive resizing's early epochs): grid_sample alone would alias, so downsample with
            # antialiasing first, as timm's eval resize does
            x = self._resize(x, size)
        b, _, h, w = x.shape
        device = x.device
        # whole source pixels only: a fractional shift would blur every image a little
        shift_px = round(self.max_shift * w)
        shifts = torch.randint(-shift_px, shift_px + 1, (b, 2), device=device).float() * (2.0 / w)
        flips = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        scale = torch.ones(b, device=device)
        if self.level == "strong":
            scale = torch.empty(b, device=device).uniform_(0.75, 1.0)  # zoom in: a mild random-resized-crop
        return self._warp(x, scale * flips, scale, shifts, size)

    def _random_resized_crop(self, x: torch.Tensor, size: int) -> torch.Tensor:
        """Every image its own random crop (area share and aspect ratio as timm draws them), flipped or not, and
        resized to `size`, in one grid_sample."""
        if size < self.out_size:
            # progressive resizing: shrink the source as much as the output (antialiased), so that each crop
            # covers as many source pixels per output pixel as at the full size
            x = self._resize(x, round(x.shape[-1] * size / self.out_size))
        b, device = x.shape[0], x.device
        area = torch.empty(b, device=device).uniform_(self.crop_scale, 1.0)
        log_ratio = torch.empty(b, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
        # the crop's width and height as fractions of the image's; timm retries a crop that does not fit, this
        # clamps it (the same crops but for the few too long on one side)
        width, height = (area * log_ratio.exp()).sqrt().clamp(max=1.0), (area / log_ratio.exp()).sqrt().clamp(max=1.0)
        # the crop's centre, anywhere that keeps it inside the image (grid units: the image spans -1..1)
        centre = (torch.rand(b, 2, device=device) * 2 - 1) * torch.stack([1 - width, 1 - height], dim=1)
        flips = torch.where(torch.rand(b, device=device) < 0.5, -1.0, 1.0)
        return self._warp(x, width * flips, height, centre, size)

    @staticmethod
    def _warp(x: torch.Tensor, x_scale: torch.Tensor, y_scale: torch.Tensor, centre: torch.Tensor,
              size: int) -> torch.Tensor:
        """Each image's window (its width and height as fractions of the image's, a negative width mirroring it,
        centred at `centre` in grid units) resampled to `size` x `size`, in one grid_sample."""
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = x_scale, y_scale, centre
        grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)
        # reflection fills the border the way reflect-padding before a random crop does
        return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)


class RandomErase:
    """timm's RandomErasing (one box of per-pixel noise per image, mode "pixel") as a few whole-batch tensor ops.
    The boxes are drawn as timm draws them: with probability `probability` an image gets one, of 2-33 % of its
    area and an aspect ratio log-uniform in 0.3-3.3, the first of 10 tries that fits, at a uniform position. But
    the box is a mask over the whole image rather than a slice of random size, so every tensor keeps its shape
    from step to step: XLA (TPU) compiles one graph instead of one per box size, and a GPU runs a handful of
    kernels instead of a Python loop of them per image."""

    def __init__(self, probability: float, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3, attempts: int = 10):
        self.probability, self.min_area, self.max_area, self.attempts = probability, min_area, max_area, attempts
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        device = x.device
        area = torch.empty(b, self.attempts, device=device).uniform_(self.min_area, self.max_area) * (h * w)
        aspect = torch.empty(b, self.attempts, device=device).uniform_(*self.log_aspect).exp()
        heights, widths = (area * aspect).sqrt().round(), (area / aspect).sqrt().round()
        fits = (heights < h) & (widths < w)
        first = fits.int().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does: not erased)
        height, width = heights.gather(1, first).squeeze(1), widths.gather(1, first).squeeze(1)
        erased = (torch.rand(b, device=device) < self.probability) & fits.any(dim=1)
        top = (torch.rand(b, device=device) * (h - height + 1)).floor()
        left = (torch.rand(b, device=device) * (w - width + 1)).floor()
        rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
        in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
        in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
        box = (in_rows[:, :, None] & in_cols[:, None, :] & erased[:, None, None]).unsqueeze(1)  # (b, 1, h, w)
        # noise drawn in the image's memory order: randn_like on a channels_last tensor is 5x slower on a CPU
        noise = torch.randn(b, h, w, x.shape[1], device=device, dtype=x.dtype).permute(0, 3, 1, 2)
        return torch.where(box, noise, x)
