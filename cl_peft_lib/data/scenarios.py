"""Continual-learning scenarios and the benchmark registry.

* **Class-incremental** (Split CIFAR-100, Split Tiny ImageNet, ImageNet-R, ``offline-cil``):
  the classes are shuffled once by a seed and cut into N tasks of disjoint class
  sets; labels are renumbered so task t holds labels ``t*k .. (t+1)*k - 1``. At
  test time the model must pick among all classes seen so far, without task id.
* **Domain-incremental** (CORe50, DomainNet, ``offline-dil``): each task is a
  domain; all tasks share one label space.

**Validation split.** Every benchmark carves a seeded validation set out of each task's
training data (:func:`validation_split`: ``Profile.val_fraction`` of each class, default 10%,
at least one image of each class that has two or more), kept on ``Task.val``; training uses
only the rest (``Task.train``) and the test set is never touched. Hyper-parameters are chosen
on ``Task.val`` (the references tune on the test set: l2p-pytorch and S-Prompts have no
validation split), so the training sets are ``val_fraction`` smaller than the references'.

Chapter: ``notebooks/01_continual_learning.ipynb``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch.utils.data import Dataset

from ..profiles import Profile
from .base import ConcatImageDataset, SubsetDataset, TensorImageDataset, download_allowed


@dataclass
class Task:
    """One task of a scenario.

    Attributes:
        task_id: position in the stream (0-based).
        name: e.g. ``"classes 0-5"`` or the domain name.
        train: training set (labels in the scenario's label space).
        test: test set (labels in the scenario's label space).
        classes: the labels this task trains on.
        val: validation set carved from the task's training images (disjoint from ``train``
            and ``test``; same label space); empty when the fraction is 0, None for tasks
            built by hand.
    """

    task_id: int
    name: str
    train: Dataset
    test: Dataset
    classes: list[int]
    val: Dataset | None = None


@dataclass
class Scenario:
    """A stream of tasks.

    Attributes:
        name: benchmark name.
        kind: ``"class"`` (class-incremental) or ``"domain"`` (domain-incremental).
        tasks: the tasks in training order.
        class_names: names in the scenario's label space.
        class_order: original class of each new label (class-incremental), else None.
        datasets: source data sets, for provenance.
    """

    name: str
    kind: Literal["class", "domain"]
    tasks: list[Task]
    class_names: list[str]
    class_order: list[int] | None = None
    datasets: list[str] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def classes_up_to(self, t: int) -> list[int]:
        """Labels seen in tasks ``0..t``."""
        return sorted({c for task in self.tasks[: t + 1] for c in task.classes})


def subsample_per_class(ds: Dataset, n: int | None, seed: int) -> Dataset:
    """Keep at most ``n`` items per class, chosen by ``seed`` (``n=None`` keeps all)."""
    if n is None:
        return ds
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in ds.targets.unique().tolist():
        idx = (ds.targets == c).nonzero().flatten()
        keep.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return SubsetDataset(ds, torch.cat(keep).sort().values)


#: Added to the run's seed for the validation draw, so that it is not the draw of the subsets.
VAL_SEED_OFFSET = 2


def validation_count(n: int, fraction: float) -> int:
    """Validation images taken from a class of ``n``: ``round(fraction * n)``, at least 1 when
    ``n >= 2`` and ``fraction > 0``, and never all of them (0 for a class of one image)."""
    if fraction <= 0 or n < 2:
        return 0
    return min(n - 1, max(1, int(math.floor(fraction * n + 0.5))))


def validation_split(targets: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of positions ``0..len(targets)-1`` into (train, validation).

    Args:
        targets: labels of the training set.
        fraction: share of each class that goes to validation (:func:`validation_count`).
        seed: the draw; the same seed gives the same split.

    Returns:
        ``(train_idx, val_idx)``: sorted, disjoint ``int64`` positions covering all of ``targets``.

    Raises:
        ValueError: ``fraction`` outside ``[0, 1)``.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    val = [torch.zeros(0, dtype=torch.int64)]
    for c in targets.unique().tolist():
        idx = (targets == c).nonzero().flatten()
        k = validation_count(len(idx), fraction)
        if k:
            val.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    val_idx = torch.cat(val).sort().values
    keep = torch.ones(len(targets), dtype=torch.bool)
    keep[val_idx] = False
    return keep.nonzero().flatten(), val_idx


def class_incremental(name: str, train: Dataset, test: Dataset, class_names: Sequence[str], num_tasks: int,
                      seed: int, class_order: Sequence[int] | None = None, datasets: Sequence[str] = (),
                      val_fraction: float = 0.0) -> Scenario:
    """Split a classification data set into ``num_tasks`` tasks of disjoint classes.

    Args:
        name: benchmark name.
        train: training set with ``targets`` in ``0..C-1``.
        test: test set with ``targets`` in ``0..C-1``.
        class_names: the C class names.
        num_tasks: N; C must be divisible by N.
        seed: shuffles the class order (unless ``class_order`` is given).
        class_order: explicit order of the C classes.
        datasets: source names, for provenance.
        val_fraction: share of each class's training images moved to ``Task.val``
            (:func:`validation_split`, drawn with ``seed + VAL_SEED_OFFSET``); the benchmarks
            pass ``Profile.val_fraction``, direct callers get no validation set by default.

    Raises:
        ValueError: C not divisible by N, a class order with duplicates or missing
            classes, or a class without training or test images.
    """
    C = len(class_names)
    if num_tasks < 1 or C % num_tasks:
        raise ValueError(f"{name}: {C} classes cannot be split into {num_tasks} equal tasks "
                         f"(choose a number of tasks that divides {C})")
    if class_order is None:
        class_order = torch.randperm(C, generator=torch.Generator().manual_seed(seed)).tolist()
    class_order = [int(c) for c in class_order]
    if len(set(class_order)) != len(class_order):
        dup = sorted({c for c in class_order if class_order.count(c) > 1})
        raise ValueError(f"{name}: class order has duplicate classes {dup}")
    if sorted(class_order) != list(range(C)):
        raise ValueError(f"{name}: class order must be a permutation of 0..{C - 1}, got {class_order}")
    for split, ds in (("train", train), ("test", test)):
        counts = torch.bincount(ds.targets, minlength=C)
        if len(counts) > C:
            raise ValueError(f"{name}: {split} labels go up to {len(counts) - 1} but there are only {C} class names")
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"{name}: classes {empty} have no {split} images; every task needs images of each class")
    new_label = torch.empty(C, dtype=torch.int64)
    new_label[torch.tensor(class_order)] = torch.arange(C)
    k = C // num_tasks
    fit_idx, val_idx = validation_split(train.targets, val_fraction, seed + VAL_SEED_OFFSET)
    tasks = []
    for t in range(num_tasks):
        orig = class_order[t * k:(t + 1) * k]
        sel = torch.tensor(orig)
        tr = SubsetDataset(train, fit_idx[torch.isin(train.targets[fit_idx], sel)], new_label)
        va = SubsetDataset(train, val_idx[torch.isin(train.targets[val_idx], sel)], new_label)
        te = SubsetDataset(test, torch.isin(test.targets, sel).nonzero().flatten(), new_label)
        tasks.append(Task(t, f"classes {t * k}-{(t + 1) * k - 1}", tr, te, list(range(t * k, (t + 1) * k)), va))
    names = [class_names[c] for c in class_order]
    return Scenario(name, "class", tasks, names, class_order, list(datasets))


def domain_incremental(name: str, domains: Sequence[tuple[str, Dataset, Dataset]], class_names: Sequence[str],
                       datasets: Sequence[str] = (), val_fraction: float = 0.0, seed: int = 0) -> Scenario:
    """One task per domain, all sharing the label space ``0..C-1``.

    Args:
        name: benchmark name.
        domains: ``(domain name, train, test)`` per domain, in training order.
        class_names: the C shared class names.
        datasets: source names, for provenance.
        val_fraction: share of each class of each domain's training images moved to ``Task.val``
            (:func:`validation_split`, domain t drawn with ``(seed + VAL_SEED_OFFSET) * 1000 + t``).
        seed: the run's seed (only the validation draw uses it).

    Raises:
        ValueError: no domains, an empty domain, or labels outside the shared space.
    """
    if not domains:
        raise ValueError(f"{name}: no domains given")
    C = len(class_names)
    tasks = []
    for t, (dname, tr, te) in enumerate(domains):
        for split, ds in (("train", tr), ("test", te)):
            if len(ds) == 0:
                raise ValueError(f"{name}: domain '{dname}' has an empty {split} set")
            if int(ds.targets.max()) >= C or int(ds.targets.min()) < 0:
                raise ValueError(f"{name}: domain '{dname}' {split} labels outside 0..{C - 1}")
        fit_idx, val_idx = validation_split(tr.targets, val_fraction, (seed + VAL_SEED_OFFSET) * 1000 + t)
        tasks.append(Task(t, dname, SubsetDataset(tr, fit_idx), te, sorted(tr.targets.unique().tolist()),
                          SubsetDataset(tr, val_idx)))
    return Scenario(name, "domain", tasks, list(class_names), None, list(datasets))


# ----------------------------------------------------------------------------- offline benchmarks

def _offline_cil(profile: Profile, seed: int) -> Scenario:
    """``offline-cil``: Fashion-MNIST + MNIST + Animal-MNIST, 30 classes, class-incremental.

    Labels before shuffling: Fashion-MNIST 0-9, MNIST 10-19, Animal-MNIST 20-29.
    The seed shuffles the class order, so tasks mix the three data sets.
    """
    from .offline import load_animal_mnist, load_fashion_mnist, load_mnist

    trs, tes, names = [], [], []
    for off, (prefix, loader) in enumerate((("fashion", load_fashion_mnist), ("mnist", load_mnist),
                                            ("animal", load_animal_mnist))):
        tr, te, cn = loader(download=download_allowed())
        trs.append(TensorImageDataset(tr.images, tr.targets + 10 * off, tr.name))
        tes.append(TensorImageDataset(te.images, te.targets + 10 * off, te.name))
        names += [f"{prefix}:{c}" for c in cn]
    train = subsample_per_class(ConcatImageDataset(trs, "offline-cil"), profile.train_per_class, seed)
    test = subsample_per_class(ConcatImageDataset(tes, "offline-cil"), profile.test_per_class, seed + 1)
    return class_incremental("offline-cil", train, test, names, profile.cil_tasks, seed,
                             datasets=["fashion_mnist", "mnist", "animal_mnist"], val_fraction=profile.val_fraction)


#: The domains of ``offline-dil`` in training order.
OFFLINE_DIL_DOMAINS = ("mnist", "optdigits", "mnist-inverted", "mnist-rot90")


def offline_dil_domains() -> list[tuple[str, TensorImageDataset, TensorImageDataset]]:
    """The four digit domains, full size: MNIST, optdigits, inverted MNIST, MNIST rotated by 90 degrees.

    The three MNIST-based domains use disjoint thirds of MNIST's train and test
    splits (fixed by seed 0), so no image appears in two domains.
    optdigits is a real shift (other writers, 8x8 grids upsampled).
    """
    from .offline import load_mnist, load_optdigits

    mtr, mte, _ = load_mnist(download=download_allowed())
    otr, ote, _ = load_optdigits()
    g = torch.Generator().manual_seed(0)
    ptr, pte = torch.randperm(len(mtr), generator=g), torch.randperm(len(mte), generator=g)
    thirds = lambda p, i: p[i::3].sort().values  # noqa: E731

    def part(i: int, f: Callable[[torch.Tensor], torch.Tensor], name: str):
        a, b = thirds(ptr, i), thirds(pte, i)
        return (TensorImageDataset(f(mtr.images[a]).contiguous(), mtr.targets[a], name),
                TensorImageDataset(f(mte.images[b]).contiguous(), mte.targets[b], name))

    m = part(0, lambda x: x, "mnist")
    inv = part(1, lambda x: 255 - x, "mnist-inverted")
    rot = part(2, lambda x: torch.rot90(x, 1, dims=(2, 3)), "mnist-rot90")
    return [("mnist", *m), ("optdigits", otr, ote), ("mnist-inverted", *inv), ("mnist-rot90", *rot)]


def _offline_dil(profile: Profile, seed: int) -> Scenario:
    """``offline-dil``: digits 0-9 across four domains (see :func:`offline_dil_domains`)."""
    doms = [(n, subsample_per_class(tr, profile.train_per_class, seed),
             subsample_per_class(te, profile.test_per_class, seed + 1)) for n, tr, te in offline_dil_domains()]
    return domain_incremental("offline-dil", doms, [str(i) for i in range(10)], datasets=["mnist", "optdigits"],
                              val_fraction=profile.val_fraction, seed=seed)


# ----------------------------------------------------------------------------- paper benchmarks

def _paper_cil(name: str, loader: str, dataset: str, profile: Profile, seed: int) -> Scenario:
    """A paper class-incremental benchmark of 10 tasks from ``paper.<loader>`` (subsampled per the profile)."""
    from . import paper

    tr, te, names = getattr(paper, loader)(download=download_allowed())
    tr = subsample_per_class(tr, profile.train_per_class, seed)
    te = subsample_per_class(te, profile.test_per_class, seed + 1)
    return class_incremental(name, tr, te, names, 10, seed, datasets=[dataset], val_fraction=profile.val_fraction)


def _split_cifar100(profile: Profile, seed: int) -> Scenario:
    """Split CIFAR-100: 100 classes in 10 tasks (L2P, DualPrompt, the paper)."""
    return _paper_cil("split-cifar100", "load_cifar100", "cifar100", profile, seed)


def _split_tinyimagenet(profile: Profile, seed: int) -> Scenario:
    """Split Tiny ImageNet: 200 classes in 10 tasks."""
    return _paper_cil("split-tinyimagenet", "load_tiny_imagenet", "tiny_imagenet", profile, seed)


def _imagenet_r(profile: Profile, seed: int) -> Scenario:
    """ImageNet-R: 200 classes in 10 tasks of 20, class-incremental (CODA-Prompt, LAMDA-PILOT; 80/20 split)."""
    return _paper_cil("imagenet-r", "load_imagenet_r", "imagenet_r", profile, seed)


def _core50(profile: Profile, seed: int) -> Scenario:
    """CORe50 (S-Prompts protocol): 8 training sessions as domains, sessions 3, 7, 10 as the shared test set."""
    from .paper import load_core50

    train_domains, test, names = load_core50(download=download_allowed())
    test = subsample_per_class(test, profile.test_per_class, seed + 1)
    doms = [(n, subsample_per_class(d, profile.train_per_class, seed), test) for n, d in train_domains]
    return domain_incremental("core50", doms, names, datasets=["core50"], val_fraction=profile.val_fraction, seed=seed)


def _domainnet(profile: Profile, seed: int) -> Scenario:
    """DomainNet: 6 domains as tasks, 345 shared classes, official train/test lists."""
    from .paper import load_domainnet

    doms, names = load_domainnet(download=download_allowed())
    d = [(n, subsample_per_class(tr, profile.train_per_class, seed), subsample_per_class(te, profile.test_per_class, seed + 1))
         for n, (tr, te) in doms.items()]
    return domain_incremental("domainnet", d, names, datasets=["domainnet"], val_fraction=profile.val_fraction,
                              seed=seed)


BENCHMARKS: dict[str, Callable[[Profile, int], Scenario]] = {
    "offline-cil": _offline_cil,
    "offline-dil": _offline_dil,
    "split-cifar100": _split_cifar100,
    "split-tinyimagenet": _split_tinyimagenet,
    "core50": _core50,
    "domainnet": _domainnet,
    "imagenet-r": _imagenet_r,
}


def build_benchmark(name: str, profile: Profile, seed: int = 0) -> Scenario:
    """Build benchmark ``name`` under ``profile``; the seed fixes class order and subsets.

    Raises:
        KeyError: unknown benchmark (the message lists valid ones).
    """
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark '{name}'; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name](profile, seed)
