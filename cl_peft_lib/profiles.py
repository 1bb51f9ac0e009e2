"""Profiles: the one switch between the paper, offline and smoke tracks.

A profile fixes the backbone, how much data each benchmark uses, and optional
overrides of the methods' epochs and batch size. Notebooks read the profile from
``$CL_PEFT_PROFILE`` (default ``offline``), so CI shrinks every chapter to
``smoke`` without editing it.

Chapter: ``book/intro.md`` (the two tracks).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Profile:
    """Everything that differs between tracks.

    Attributes:
        name: ``smoke``, ``offline`` or ``paper``.
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


PROFILES: dict[str, Profile] = {
    # CI: 2 CPU cores, every notebook in minutes.
    "smoke": Profile("smoke", "offline_vit_tiny_p4_28", train_per_class=16, test_per_class=10,
                     epochs=2, batch_size=16, eval_batch_size=128, lr_batch=128),
    # The offline default: real registry data, the project's distilled ViT; CPU-feasible, fast on a GPU.
    "offline": Profile("offline", "offline_vit_tiny_p4_28", train_per_class=300, test_per_class=200,
                       batch_size=128, eval_batch_size=512),
    # The paper's setting: ViT-B/16 ImageNet-21k, full data sets, the methods' published defaults.
    "paper": Profile("paper", "vit_base_patch16_224.augreg_in21k", eval_batch_size=256, num_workers=4, cil_tasks=10),
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
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})
