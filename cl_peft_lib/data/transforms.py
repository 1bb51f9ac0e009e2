"""Batched, on-device preprocessing from stored ``uint8`` images to model input.

Images are stored small (28x28 grey for the offline track, 32x32 for CIFAR) and
turned into the backbone's input on the training device, one batch at a time:
scale to [0, 1], repeat grey to 3 channels, resize to the backbone's input size,
normalise with the backbone's mean and std. Doing this on the GPU keeps the
input pipeline out of the critical path (see the efficiency chapter).

Chapter: ``notebooks/01_continual_learning.ipynb``.
"""
from __future__ import annotations

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
    m = torch.as_tensor(mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
