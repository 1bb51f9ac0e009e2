"""Image-set containers shared by every loader.

Every loader in :mod:`cl_peft_lib.data` returns datasets whose items are
``(image, label)`` with ``image`` a ``uint8`` tensor of shape ``(C, H, W)``
(C is 1 or 3) and ``label`` an ``int``, and which expose ``targets`` (a 1-D
``int64`` tensor) so that scenarios can split by class without decoding a single
image. Resizing to the backbone's input size, channel expansion and
normalisation happen later, batched, on the training device
(:func:`cl_peft_lib.data.transforms.to_model_input`).

Chapter: ``notebooks/02_pretrained_backbone.ipynb`` (the test sets of all tasks as one data set).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where we looked; the message says how to obtain it."""


#: Environment switch that lets the benchmarks download missing data (Colab); off by default,
#: so that nothing (a test, a chapter on a machine without internet) reaches for the network.
DOWNLOAD_ENV = "CL_PEFT_DOWNLOAD"


def download_allowed() -> bool:
    """True only when ``$CL_PEFT_DOWNLOAD`` is ``1``/``true``/``yes``: the benchmarks then fetch
    missing data sets; otherwise a missing data set raises :class:`DatasetNotFoundError`."""
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


class TensorImageDataset(Dataset):
    """Images held in memory as one ``uint8`` tensor ``(N, C, H, W)``.

    Args:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``.
        targets: ``int64`` tensor of shape ``(N,)``.
        name: human-readable name used in messages and provenance.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, name: str = "") -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        targets = torch.as_tensor(targets, dtype=torch.int64)
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets
        self.name = name

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.images[i], int(self.targets[i])

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fast batched fetch (no per-item Python work)."""
        return self.images[idx], self.targets[idx]


class FileImageDataset(Dataset):
    """Images decoded lazily from files (for data sets too large for memory).

    Each image is decoded with PIL, converted to RGB and resized to
    ``(size, size)`` so that batches stack; the result is a ``uint8`` tensor.

    Args:
        paths: image file paths.
        targets: labels, one per path.
        size: side length after resizing.
        name: human-readable name.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], targets: Sequence[int], size: int, name: str = "") -> None:
        if len(paths) != len(targets):
            raise ValueError(f"{len(paths)} paths but {len(targets)} targets")
        self.paths = [str(p) for p in paths]
        self.targets = torch.as_tensor(list(targets), dtype=torch.int64)
        self.size = size
        self.name = name

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), int(self.targets[i])


class SubsetDataset(Dataset):
    """A view on ``indices`` of ``base`` whose labels pass through ``label_map``.

    Args:
        base: any dataset of this module (exposes ``targets``).
        indices: positions in ``base`` to keep.
        label_map: optional ``int64`` tensor mapping base labels to new labels.
    """

    def __init__(self, base: Dataset, indices: torch.Tensor | Sequence[int], label_map: torch.Tensor | None = None) -> None:
        self.base = base
        self.indices = torch.as_tensor(indices, dtype=torch.int64)
        self.label_map = label_map
        t = base.targets[self.indices]
        self.targets = label_map[t] if label_map is not None else t
        self.name = getattr(base, "name", "")

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        x, _ = self.base[int(self.indices[i])]
        return x, int(self.targets[i])

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not hasattr(self.base, "get_batch"):
            raise AttributeError("base has no get_batch")
        x, _ = self.base.get_batch(self.indices[idx])
        return x, self.targets[idx]


class ConcatImageDataset(Dataset):
    """Concatenation that keeps ``targets`` and the batched fast path."""

    def __init__(self, parts: Sequence[Dataset], name: str = "") -> None:
        self.parts = list(parts)
        self.targets = torch.cat([p.targets for p in self.parts]) if self.parts else torch.zeros(0, dtype=torch.int64)
        self.offsets = torch.tensor([0] + list(np.cumsum([len(p) for p in self.parts])), dtype=torch.int64)
        self.name = name

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _locate(self, i: int) -> tuple[int, int]:
        k = int(torch.searchsorted(self.offsets, torch.tensor(i), right=True)) - 1
        return k, i - int(self.offsets[k])

    def __getitem__(self, i: int):
        k, j = self._locate(i)
        return self.parts[k][j]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        part = torch.searchsorted(self.offsets, idx, right=True) - 1
        xs, ys, order = [], [], []
        for k in part.unique().tolist():
            sel = (part == k).nonzero().flatten()
            x, y = self.parts[k].get_batch(idx[sel] - self.offsets[k])
            xs.append(x)
            ys.append(y)
            order.append(sel)
        perm = torch.cat(order).argsort()
        shapes = {tuple(x.shape[1:]) for x in xs}
        if len(shapes) > 1:
            raise ValueError(f"parts have different image shapes {shapes}; resize them to one size when loading")
        return torch.cat(xs)[perm], torch.cat(ys)[perm]


def has_fast_batches(ds: Dataset) -> bool:
    """True when ``ds.get_batch`` works all the way down (in-memory data)."""
    if isinstance(ds, TensorImageDataset):
        return True
    if isinstance(ds, SubsetDataset):
        return has_fast_batches(ds.base)
    if isinstance(ds, ConcatImageDataset):
        return all(has_fast_batches(p) for p in ds.parts)
    return False


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Where paper-scale data sets live: ``explicit``, else ``$CL_PEFT_DATA``, else ``~/.cache/cl_peft/data``."""
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("CL_PEFT_DATA", "~/.cache/cl_peft/data")).expanduser()
