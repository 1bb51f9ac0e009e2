"""Baselines: the floor and the ceiling every PEFT method is read against.

* ``finetune``: sequential full fine-tuning (every weight trains on each task in
  turn): the textbook case of catastrophic forgetting.
* ``linear_probe``: frozen backbone + linear head (L2P without prompts).
* ``joint``: full fine-tuning on the union of all tasks seen so far; its last row
  is the joint-training upper bound.
* ``ncm``: nearest class mean on frozen features (no gradient step at all).

Chapter: ``notebooks/01_continual_learning.ipynb`` and ``02_pretrained_backbone.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import REF_L2P
from .base import ContinualMethod, MethodConfig, TaskContext


class LinearHeadMethod(ContinualMethod):
    """Backbone features -> one linear classifier over the whole label space."""

    def __init__(self, backbone, kind, num_classes, num_tasks, config) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.head = nn.Linear(self.embed_dim, num_classes)
        nn.init.zeros_(self.head.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class FinetuneConfig(MethodConfig):
    """Sequential full fine-tuning. Defaults: Adam, lr 1e-4 (a common ViT fine-tuning rate), 5 epochs,
    no logit masking (the classic forgetting baseline)."""

    lr: float = 1e-4
    train_mask: bool = False


class Finetune(LinearHeadMethod):
    """Sequential fine-tuning of the whole network, task after task."""

    name = "finetune"
    config_cls = FinetuneConfig
    freeze_backbone = False


@dataclass
class LinearProbeConfig(MethodConfig):
    """Frozen backbone + linear head, trained like L2P's classifier (Adam, lr 0.03 x batch/256, masked logits)."""

    lr: float = 0.03
    lr_ref_batch: float | None = 256
    train_mask: bool = True


class LinearProbe(LinearHeadMethod):
    """Frozen backbone, linear head trained task after task.

    ``reference_backbone``: L2P's (it is L2P without prompts), so that the paper profile compares the two
    on the same weights.
    """

    name = "linear_probe"
    config_cls = LinearProbeConfig
    reference_backbone: ClassVar[str | None] = REF_L2P


@dataclass
class JointConfig(FinetuneConfig):
    """Joint training: full fine-tuning on all data seen so far (the upper bound)."""


class Joint(LinearHeadMethod):
    """Full fine-tuning on the union of all tasks seen so far (cumulative joint training)."""

    name = "joint"
    config_cls = JointConfig
    freeze_backbone = False
    cumulative = True


@dataclass
class NCMConfig(MethodConfig):
    """Nearest class mean: no training (``epochs=0``), cosine similarity to class prototypes."""

    epochs: int = 0
    batch_size: int = 64


class NCM(ContinualMethod):
    """The SimpleCIL baseline (Zhou et al., 2023, "Revisiting class-incremental learning with pre-trained
    models"; LAMDA-PILOT ``models/simplecil.py``): a nearest-class-mean classifier on frozen features.

    At the end of each task the mean feature of each of its classes becomes a
    prototype; prediction is cosine similarity to the prototypes. One difference: SimpleCIL averages
    the raw embeddings (``embedding.mean(0)``, scored by a cosine head), we average L2-normalised ones
    (read in the mirror sun-hailong/LAMDA-PILOT, commit 3450184).
    """

    name = "ncm"
    config_cls = NCMConfig

    def __init__(self, backbone, kind, num_classes, num_tasks, config) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.register_buffer("sums", torch.zeros(num_classes, self.embed_dim))
        self.register_buffer("counts", torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        protos = F.normalize(self.sums / self.counts.clamp(min=1).unsqueeze(1), dim=1)
        return F.normalize(self.features(x).float(), dim=1) @ protos.T

    @torch.no_grad()
    def end_task(self, task_id: int, ctx: TaskContext) -> None:
        for x, y in ctx.batches(ctx.task.train):
            with ctx.autocast():
                f = F.normalize(self.features(x).float(), dim=1)
            self.sums.index_add_(0, y, f)
            self.counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self(x).float().masked_fill(self.counts == 0, float("-inf"))
