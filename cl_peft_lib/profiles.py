"""Profiles: the one switch between the paper, offline and smoke tracks.

A profile fixes the backbone, how much data each benchmark uses, and optional
overrides of the methods' epochs and batch size. Notebooks read the profile from
``$CL_PEFT_PROFILE`` (default ``offline``), so CI shrinks every chapter to
``smoke`` without editing it.

Chapter: README (``profiles.py``: the one switch between the tracks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Literal


@dataclass(frozen=True)
class Profile:
    """Everything that differs between tracks.

    Attributes:
        name: ``smoke``, ``offline``, ``laptop``, ``colab`` or ``paper``.
        backbone: key of :data:`cl_peft_lib.backbones.BACKBONES`.
        train_per_class: training images kept per class (None keeps all).
        test_per_class: test images kept per class (None keeps all).
        epochs: override of every method's epochs (None keeps the method's default).
        batch_size: override of every method's batch size (None keeps the method's default;
            learning rates that scale with batch size follow it).
        eval_batch_size: batch size for evaluation and feature extraction.
        num_workers: data-loader workers for file-backed data sets (in-memory ones need none).
        cil_tasks: number of tasks of the offline class-incremental benchmark.
        lr_batch: the batch size that methods scaling their learning rate with the batch size
            (``lr_ref_batch``) are scaled for; None: the batch actually used (their published rule).
            ``smoke`` sets 128, the offline batch, so that it trains with the offline learning rates:
            with 16 images per class and 2 epochs, rates cut to 16/256 leave too few steps to learn.
        val_fraction: share of each class's training images held out as the validation set
            ``Task.val`` (at least one image of a class with two or more; see
            :func:`cl_peft_lib.data.scenarios.validation_split`); training uses the rest.
        train_augment: augmentation of the training batches only (never of evaluation or
            ``end_task`` batches; :func:`cl_peft_lib.data.transforms.augment_batch`): ``"none"``,
            ``"crop"`` (random resized crop) or ``"crop_flip"`` (crop, then horizontal flip with p=0.5).
        augment_scale: area range of the random resized crop, as a share of the image.
        augment_ratio: aspect-ratio range of the random resized crop.
        reference_defaults: the paper track's per-method reference settings: each method's
            ``reference_backbone`` (the backbone its published numbers come from) instead of
            ``backbone`` when the run names none (:meth:`backbone_for`; an explicit backbone override
            turns this part off), and the reference's per-benchmark epochs (:meth:`method_options`).
        backbone_overridden: ``backbone`` was named explicitly (``get_profile(backbone=...)`` or
            ``$CL_PEFT_BACKBONE``), so it wins over the methods' reference backbones.
    """

    name: str
    backbone: str
    train_per_class: int | None = None
    test_per_class: int | None = None
    epochs: int | None = None
    batch_size: int | None = None
    eval_batch_size: int = 256
    num_workers: int = 0
    cil_tasks: int = 5
    lr_batch: int | None = None
    val_fraction: float = 0.1
    train_augment: Literal["none", "crop", "crop_flip"] = "none"
    augment_scale: tuple[float, float] = (0.08, 1.0)
    augment_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    reference_defaults: bool = False
    backbone_overridden: bool = False

    def backbone_for(self, method: str) -> str:
        """The backbone a run of ``method`` uses when it names none: the method class's
        ``reference_backbone`` under ``reference_defaults`` (unless ``backbone`` was overridden), else ``backbone``."""
        if self.reference_defaults and not self.backbone_overridden:
            from .methods import get_method_class

            ref = getattr(get_method_class(method), "reference_backbone", None)
            if ref:
                return ref
        return self.backbone

    def method_options(self, method: str, benchmark: str) -> dict:
        """Reference settings of ``method`` on ``benchmark`` under ``reference_defaults`` (else none), to be
        applied before the run's own options: the epochs of the config's ``benchmark_epochs`` (S-Prompts:
        20 on CORe50, 30 on DomainNet) unless the profile fixes ``epochs``."""
        if not self.reference_defaults or self.epochs is not None:
            return {}
        from .methods import get_method_class

        table = getattr(get_method_class(method).config_cls, "benchmark_epochs", None) or {}
        return {"epochs": table[benchmark]} if benchmark in table else {}


#: The digit-safe augmentation of the offline tracks: no flip (a flipped 2, 3 or 7 is no digit, and
#: Fashion-MNIST/Animal-MNIST gain little from it at 28 px), and a mild random resized crop
#: (at least 80% of the area, aspect 0.9-1.1): MNIST digits sit in the central 20x20 of 28x28, so the
#: crop shifts and rescales them by a few pixels without cutting strokes off.
OFFLINE_AUGMENT = dict(train_augment="crop", augment_scale=(0.8, 1.0), augment_ratio=(0.9, 1.1))

PROFILES: dict[str, Profile] = {
    # CI: 2 CPU cores, every notebook in minutes.
    "smoke": Profile("smoke", "offline_vit_tiny_p4_28", train_per_class=16, test_per_class=10,
                     epochs=2, batch_size=16, eval_batch_size=128, lr_batch=128, **OFFLINE_AUGMENT),
    # The offline default: real registry data, the project's distilled ViT; CPU-feasible, fast on a GPU.
    "offline": Profile("offline", "offline_vit_tiny_p4_28", train_per_class=300, test_per_class=200,
                       batch_size=128, eval_batch_size=512, **OFFLINE_AUGMENT),
    # A laptop without a GPU (issue 16): the offline data, backbone and epochs, 50 training and 50 test images per
    # class (a sixth of the offline training data), batch 64 at the offline learning rates (lr_batch 128). Whether
    # the offline track's conclusions survive this cut is measured, not assumed (README: "A laptop without a GPU").
    "laptop": Profile("laptop", "offline_vit_tiny_p4_28", train_per_class=50, test_per_class=50,
                      batch_size=64, eval_batch_size=256, lr_batch=128, **OFFLINE_AUGMENT),
    # The paper's setting: ViT-B/16 ImageNet-21k, full data sets, the methods' published defaults.
    # Backbone per method (reference_backbones): L2P/DualPrompt/L2L the original in21k ViT-B/16, S-Prompts
    # and S-LoRA in21k fine-tuned on in1k (see cl_peft_lib.backbones); augreg_in21k for the others.
    # Augmentation: l2p-pytorch datasets.py build_transform (commit 62c1dae):
    # RandomResizedCrop(scale=(0.05, 1.0), ratio=(3/4, 4/3)) + RandomHorizontalFlip(0.5).
    # A free Colab T4 (issue 16): the paper's backbones, data and reference defaults, cut so that every training
    # chapter's estimated T4 time is at most 20 min and its peak memory at most 13 GiB (cl_peft_lib.colab:
    # estimated from the measured fp16 H200 benchmark; the appendix tabulates it). Chapter 5 loads there.
    "colab": Profile("colab", "vit_base_patch16_224.augreg_in21k", train_per_class=80, test_per_class=10, epochs=1,
                     batch_size=128, eval_batch_size=256, num_workers=2, cil_tasks=10, train_augment="crop_flip",
                     augment_scale=(0.05, 1.0), reference_defaults=True),
    "paper": Profile("paper", "vit_base_patch16_224.augreg_in21k", eval_batch_size=256, num_workers=4, cil_tasks=10,
                     train_augment="crop_flip", augment_scale=(0.05, 1.0), reference_defaults=True),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """Profile ``name`` (default ``$CL_PEFT_PROFILE`` or ``offline``), with field overrides.

    ``$CL_PEFT_BACKBONE`` overrides the backbone (e.g. ``random_vit_tiny_p4_28`` to see what
    the distilled weights are worth).

    Raises:
        KeyError: unknown profile (the message lists valid ones).
    """
    name = name or os.environ.get("CL_PEFT_PROFILE", "offline")
    if name not in PROFILES:
        raise KeyError(f"unknown profile '{name}'; valid: {', '.join(PROFILES)}")
    if os.environ.get("CL_PEFT_BACKBONE"):
        overrides.setdefault("backbone", os.environ["CL_PEFT_BACKBONE"])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "backbone" in overrides:  # a backbone named explicitly wins over the methods' reference backbones
        overrides.setdefault("backbone_overridden", True)
    return replace(PROFILES[name], **overrides)
