"""Paper-track data sets written in their publishers' on-disk formats with random pixels, so that the real
loaders (:mod:`cl_peft_lib.data.paper`) and a whole ``--profile paper`` or ``colab`` run can be exercised where
nothing may be downloaded: the tests' dry run (``tests/test_paper_dryrun.py``) and the GPU timing check of the
Colab estimate (``scripts/colab_check.py``). Speed does not depend on the pixels.

Chapter: ``book/appendix_paper_track.md`` ("A free Colab T4").
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def write_cifar100(root: str | Path, labels: Mapping[str, Sequence[int]],
                   images: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write ``root/cifar-100-python/{train,test,meta}`` as the official release's Python-2 pickles (bytes keys,
    ``b"data"`` an ``(N, 3072)`` uint8 array of channel-planar rows, ``b"fine_labels"``), which
    :func:`cl_peft_lib.data.paper.load_cifar100` reads.

    Args:
        root: the data root (``$CL_PEFT_DATA``); ``cifar-100-python/`` must not exist yet.
        labels: ``{"train": [...], "test": [...]}``, fine labels in ``0..99``.
        images: per split, ``(N, 3, 32, 32)`` uint8 images (default: uniform random from ``seed``).
        seed: seed of the random images.

    Returns:
        The images written, per split, ``(N, 3, 32, 32)`` uint8.
    """
    base = Path(root) / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "test"):
        y = [int(c) for c in labels[split]]
        x = images[split] if images and split in images else rng.integers(0, 256, size=(len(y), 3, 32, 32),
                                                                             dtype=np.uint8)
        if x.shape != (len(y), 3, 32, 32) or x.dtype != np.uint8:
            raise ValueError(f"{split} images: expected uint8 {(len(y), 3, 32, 32)}, got {x.dtype} {x.shape}")
        out[split] = x
        d = {b"batch_label": f"{split} batch".encode(), b"filenames": [b"f.png"] * len(y), b"fine_labels": y,
             b"coarse_labels": [0] * len(y), b"data": x.reshape(len(y), 3072)}
        (base / split).write_bytes(pickle.dumps(d, protocol=2))
    meta = {b"fine_label_names": [f"class{k}".encode() for k in range(100)],
            b"coarse_label_names": [f"super{k}".encode() for k in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return out
