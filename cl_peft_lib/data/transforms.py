"""Batched, on-device preprocessing from stored ``uint8`` images to model input.

Images are stored small (28x28 grey for the offline track, 32x32 for CIFAR) and
turned into the backbone's input on the training device, one batch at a time:
scale to [0, 1], repeat grey to 3 channels, resize to the backbone's input size,
normalise with the backbone's mean and std. Doing this on the GPU keeps the
input pipeline out of the critical path (see the efficiency chapter).

Training batches, and only they, are then augmented on the device (:func:`augment_batch`,
chosen by ``Profile.train_augment``): a random resized crop, with a horizontal flip on the
paper track (as the references' ``RandomResizedCrop`` + ``RandomHorizontalFlip``) and without
one on the digit-based offline tracks.

Normalisation: we use the backbone's own mean/std (timm's pretrained config; 0.5/0.5 for the
ViT-B/16 tags and the offline student). The references do not: l2p-pytorch and
dualprompt-pytorch feed unnormalised [0, 1] images (``datasets.py`` ``build_transform`` ends with
``ToTensor()``), S-Prompts normalises with ImageNet's mean/std (``utils/data.py``). Kept as is:
the backbone's normalisation is the input range its weights were trained for.

Chapter: README (``data/transforms.py``: preprocessing and augmentation on the device).
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F


def to_model_input(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Turn a ``uint8`` batch ``(B, C, H, W)`` into normalised float input ``(B, 3, size, size)``.

    Args:
        x: ``uint8`` images, C in {1, 3}, on any device.
        size: the backbone's input side length.
        mean: per-channel mean of the backbone's normalisation.
        std: per-channel std of the backbone's normalisation.
        dtype: output dtype.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    x = x.to(dtype).div_(255.0)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    m = _channel_tensor(tuple(mean), dtype, x.device)
    s = _channel_tensor(tuple(std), dtype, x.device)
    return (x - m) / s


@functools.lru_cache(maxsize=64)
def _channel_tensor(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``values`` as a ``(1, C, 1, 1)`` tensor on ``device``, made once: a fresh one per batch would
    be copied from pageable host memory, which waits for the GPU to finish its queued work."""
    return torch.as_tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device)


#: The training augmentations (``Profile.train_augment``).
AUGMENTATIONS = ("none", "crop", "crop_flip")


def random_resized_crop_params(n: int, generator: torch.Generator, scale: Sequence[float] = (0.08, 1.0),
                               ratio: Sequence[float] = (3 / 4, 4 / 3), tries: int = 10
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop boxes of torchvision's ``RandomResizedCrop`` rule for ``n`` square images, batched.

    For each image: area share ``s ~ U(scale)``, aspect ``r`` log-uniform in ``ratio``, box
    width ``sqrt(s r)`` and height ``sqrt(s / r)`` (shares of the side); the first of ``tries``
    draws that fits is used, else the whole image (torchvision's fallback for a square image
    whose aspect lies in ``ratio``). The offsets are continuous, not whole pixels.

    Returns:
        ``(w, h, x0, y0)``: box width, height and top-left corner as shares of the side, each ``(n,)``.
    """
    s = torch.empty(n, tries).uniform_(float(scale[0]), float(scale[1]), generator=generator)
    logr = torch.empty(n, tries).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    w, h = (s * logr.exp()).sqrt(), (s / logr.exp()).sqrt()
    ok = (w <= 1) & (h <= 1)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1))
    pick = first.clamp(min=0).unsqueeze(1)
    w = torch.where(first >= 0, w.gather(1, pick).squeeze(1), torch.ones(n))
    h = torch.where(first >= 0, h.gather(1, pick).squeeze(1), torch.ones(n))
    u = torch.rand(n, 2, generator=generator)
    return w, h, u[:, 0] * (1 - w), u[:, 1] * (1 - h)


def augment_params(n: int, mode: str, generator: torch.Generator, scale: Sequence[float] = (0.08, 1.0),
                   ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor | None:
    """Random augmentation of ``n`` images as a ``(n, 5)`` table: crop box ``(w, h, x0, y0)``
    (:func:`random_resized_crop_params`) and a flip flag (1: mirror; only with ``"crop_flip"``, p=1/2).

    Returns:
        The table, or None for ``"none"``.

    Raises:
        ValueError: unknown mode.
    """
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{mode}'; valid: {', '.join(AUGMENTATIONS)}")
    if mode == "none":
        return None
    w, h, x0, y0 = random_resized_crop_params(n, generator, scale, ratio)
    flip = (torch.rand(n, generator=generator) < 0.5).float() if mode == "crop_flip" else torch.zeros(n)
    return torch.stack([w, h, x0, y0, flip], dim=1)


def epoch_augment_params(n: int, mode: str, seed: int, scale: Sequence[float] = (0.08, 1.0),
                         ratio: Sequence[float] = (3 / 4, 4 / 3), block: int = 4096) -> torch.Tensor | None:
    """:func:`augment_params` for positions ``0..n-1`` of an epoch, drawn in blocks of ``block`` positions,
    block k from its own generator seeded by ``(seed, k)``: the draw of position p depends on ``seed`` and
    p only, not on ``n``. The loop keys it by the position in the global (all ranks) epoch order, so a
    sample is augmented the same way whatever the number of ranks, and again after a resume."""
    if mode not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{mode}'; valid: {', '.join(AUGMENTATIONS)}")
    if mode == "none":
        return None
    parts = []
    for k in range(math.ceil(n / block)):
        g = torch.Generator().manual_seed((seed * 1_000_003 + k) % (2 ** 63 - 1))
        parts.append(augment_params(block, mode, g, scale, ratio))  # whole blocks: a draw never depends on n
    return torch.cat(parts)[:n] if parts else torch.zeros(0, 5)


def apply_augment(x: torch.Tensor, params: torch.Tensor | None) -> torch.Tensor:
    """Crop (and mirror) each image of a float batch ``(B, C, S, S)`` as its row of ``params``
    (:func:`augment_params`), resampled bilinearly back to ``S x S`` with one ``grid_sample``, on ``x``'s
    device; ``params=None`` returns ``x`` itself."""
    if params is None or len(x) == 0:
        return x
    if len(params) != len(x):
        raise ValueError(f"{len(params)} augmentation rows for a batch of {len(x)}")
    w, h, x0, y0, flip = params.unbind(1)
    theta = torch.zeros(len(x), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = torch.where(flip > 0, -w, w), h
    theta[:, 0, 2], theta[:, 1, 2] = 2 * x0 + w - 1, 2 * y0 + h - 1  # box centre in [-1, 1]
    if x.is_cuda:  # from pinned memory the copy is queued behind the GPU's work instead of waiting for it
        theta = theta.pin_memory().to(x.device, non_blocking=True)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, scale: Sequence[float] = (0.08, 1.0),
                  ratio: Sequence[float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Training augmentation of a model-ready batch ``(B, 3, S, S)``, on its device, shape kept.

    Each image gets its own random resized crop (:func:`random_resized_crop_params`), resampled
    bilinearly back to ``S x S`` with one ``grid_sample`` for the whole batch; ``"crop_flip"``
    then mirrors it horizontally with probability 1/2. The random numbers come from the CPU
    ``generator``, so a batch is augmented the same way on every device. (The loop draws a whole
    epoch's table with :func:`epoch_augment_params` and applies rows with :func:`apply_augment`.)

    The references (l2p/dualprompt-pytorch ``datasets.py`` ``build_transform``; S-Prompts
    ``utils/data.py``) crop the stored image with PIL and resize the crop to 224 px; here the crop
    is taken from the batch already resized to the model's input (two bilinear resamplings instead
    of one), which keeps the whole input pipeline on the device.

    Args:
        x: float batch (normalised or not: the crop never leaves the image, nothing is padded).
        mode: ``"none"`` (returns ``x`` itself), ``"crop"`` or ``"crop_flip"``.
        generator: CPU generator for the crop boxes and flips.
        scale: area range of the crop, as a share of the image.
        ratio: aspect-ratio range of the crop.

    Raises:
        ValueError: unknown mode.
    """
    return apply_augment(x, augment_params(len(x), mode, generator, scale, ratio))
