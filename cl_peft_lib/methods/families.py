"""The two method families of the paper's swap, with the PEFT module left abstract.

* :class:`L2XMethod` (L2P -> L2L): a keyed pool of M PEFT modules; each sample's
  frozen query picks its top-N modules; one classifier shared by all tasks; the
  loss adds L2P's surrogate term. Subclasses only say how the selected modules
  change the forward pass (:meth:`L2XMethod.peft_features`).
* :class:`SXMethod` (S-Prompts -> S-LoRA): one PEFT module and one classifier per
  domain; at the end of each domain, k-means on its frozen features; at test time
  the nearest centroid picks the domain, hence module and classifier. Subclasses
  only say how to add a module and how a module changes the forward pass.

Because query, keys, selection, surrogate loss, k-means and heads live here, an
L2P-vs-L2L or S-Prompts-vs-S-LoRA comparison changes the PEFT technique and
nothing else.

Chapter: README (``families.py``: what the prompt methods and their LoRA swaps share).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import REF_L2P, REF_SPROMPTS
from ..options import check_range
from .base import ContinualMethod, MethodConfig, Optimizer, Schedule, TaskContext
from .selection import KeyedPool, KMeansTaskIdentifier, query_features


def scale_lr(cfg: MethodConfig, lr: float) -> float:
    """``lr`` under the config's linear batch rule: ``lr * batch_size / lr_ref_batch`` (unchanged without
    ``lr_ref_batch``), the rule :attr:`~.base.MethodConfig.effective_lr` applies to ``cfg.lr``; used for the
    rates of extra parameter groups (e.g. ``lora_lr``)."""
    return lr * cfg.batch_size / cfg.lr_ref_batch if cfg.lr_ref_batch else lr


class PerTaskHeads(nn.Module):
    """One linear classifier over the shared label space per task, applied per sample.

    Args:
        num_tasks: T.
        embed_dim: D.
        num_classes: C.
    """

    def __init__(self, num_tasks: int, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList()
        self.num_tasks, self.embed_dim, self.num_classes = num_tasks, embed_dim, num_classes

    def add_head(self, device: torch.device | None = None) -> nn.Linear:
        """Append a head for the next task (zero bias, small normal weights)."""
        h = nn.Linear(self.embed_dim, self.num_classes, device=device)
        nn.init.trunc_normal_(h.weight, std=0.02)
        nn.init.zeros_(h.bias)
        self.heads.append(h)
        return h

    def forward(self, f: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)``: sample b goes through head ``task_ids[b]`` (vectorised gather)."""
        W = torch.stack([h.weight for h in self.heads])  # (T, C, D)
        b = torch.stack([h.bias for h in self.heads])  # (T, C)
        return torch.einsum("bd,bcd->bc", f, W[task_ids].to(f.dtype)) + b[task_ids].to(f.dtype)


@dataclass
class L2XConfig(MethodConfig):
    """L2P's published Split CIFAR-100 settings (l2p-pytorch ``cifar100_l2p``), shared by L2L.

    Attributes:
        pool_size: M, modules (prompts or LoRA modules) in the pool.
        top_n: N, modules selected per sample.
        surrogate_weight: lambda, weight of the key-query matching term.
        batchwise: batch-wise selection during training (the N keys most chosen in the batch).
    """

    pool_size: int = 10
    top_n: int = 5
    surrogate_weight: float = 0.1
    batchwise: bool = True
    epochs: int = 5
    batch_size: int = 16
    optimizer: Optimizer = "adam"
    lr: float = 0.03
    lr_ref_batch: float | None = 256
    schedule: Schedule = "constant"
    train_mask: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "pool_size", ge=1)
        check_range(self, "top_n", ge=1, le=self.pool_size, note=" (pool_size)")
        check_range(self, "surrogate_weight", ge=0)


class L2XMethod(ContinualMethod):
    """Keyed pool of PEFT modules, shared classifier, surrogate loss (L2P and L2L).

    ``reference_backbone``: the original ImageNet-21k ViT-B/16 (timm ``vit_base_patch16_224.orig_in21k``),
    which L2P's and DualPrompt's published numbers use (l2p-pytorch ``vision_transformer.py``, commit
    68aaa4c: ``vit_base_patch16_224`` -> ``imagenet21k/ViT-B_16.npz``); the paper profile picks it.
    """

    config_cls = L2XConfig
    #: The backbone of the published numbers (the paper profile's choice when the run names none).
    reference_backbone: ClassVar[str | None] = REF_L2P

    def __init__(self, backbone, kind, num_classes, num_tasks, config: L2XConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.pool = KeyedPool(config.pool_size, self.embed_dim, config.top_n, config.batchwise)
        self.head = nn.Linear(self.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self._match: tuple[torch.Tensor, torch.Tensor] | None = None

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """q(x): the frozen, module-free [CLS] feature (subclasses that hook the backbone override)."""
        return query_features(self.backbone, x)

    def peft_features(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` for the head when sample b uses modules ``idx[b]`` (shape ``(B, N)``)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.query(x)
        idx, sim = self.pool.select(q)
        self._match = (sim, idx)
        return self.head(self.peft_features(x, idx))

    def observe(self, x: torch.Tensor, y: torch.Tensor):
        logits = self(x)
        ce = F.cross_entropy(self.mask_train_logits(logits).float(), y)
        match = KeyedPool.surrogate(*self._match)
        return ce - self.cfg.surrogate_weight * match, {"ce": ce.detach(), "match": match.detach()}

    def begin_task(self, task_id: int, classes: list[int]) -> None:
        super().begin_task(task_id, classes)
        self.pool.reset_counts()

    def set_eval(self, cfg) -> None:
        super().set_eval(cfg)
        self.pool.batchwise_test = cfg.batchwise_selection

    def extra_metrics(self) -> dict:
        return {"selection_counts_last_eval": self.pool.counts.tolist()}


@dataclass
class SXConfig(MethodConfig):
    """S-Prompts' settings (its ViT configs), shared by S-LoRA.

    Reference: iamwangyabin/S-Prompts ``methods/sprompt.py`` and ``configs/*.json`` (commit a26e822, the
    latest; "fix configs" 9320007): SGD momentum 0.9, lr 0.01 (``init_lr`` = ``lrate``), cosine over the
    epochs, batch 128, weight decay 5e-4 on the first domain (``init_weight_decay``) and 2e-4 after
    (``weight_decay``), 20 epochs on CORe50 and 30 on DomainNet (``init_epoch`` = ``epochs``; the repository's
    runnable CORe50/DomainNet configs are those of its CLIP variant, ``net_type: slip``, the only ones it
    ships for these benchmarks; we take their schedule for the ViT variant too). The
    reference steps its cosine once per epoch, ours once per step (the same curve, sampled finer).
    Our ``epochs=10`` default keeps the offline track cheap; the paper profile applies
    :attr:`benchmark_epochs` (:meth:`cl_peft_lib.profiles.Profile.method_options`).

    Attributes:
        kmeans_k: centroids per domain for task identification (the true domain instead is the
            ``oracle_task_id`` evaluation setting: :class:`~cl_peft_lib.evaluation.EvalConfig`).
        shared_head: one classifier for all domains instead of one per domain (ablation; the
            PEFT modules stay per domain).
        first_task_weight_decay: weight decay while training the first domain (the reference's
            ``init_weight_decay`` 5e-4); None: ``weight_decay`` throughout.
    """

    #: The reference's epochs per benchmark (``configs/core50_slip.json``, ``configs/domainnet_slip.json``).
    benchmark_epochs: ClassVar[dict[str, int]] = {"core50": 20, "domainnet": 30}

    kmeans_k: int = 5
    shared_head: bool = False
    epochs: int = 10
    batch_size: int = 128
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 2e-4
    schedule: Schedule = "cosine"
    train_mask: bool = False
    first_task_weight_decay: float | None = 5e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "kmeans_k", ge=1)


class SXMethod(ContinualMethod):
    """One PEFT module and one classifier per domain, routed by k-means (S-Prompts and S-LoRA).

    ``reference_backbone``: ViT-B/16 pretrained on ImageNet-21k and fine-tuned on ImageNet-1k (timm
    ``vit_base_patch16_224.augreg_in21k_ft_in1k``): S-Prompts ``models/sinet.py`` (commit a26e822) builds
    timm's untagged ``vit_base_patch16_224`` with ``pretrained=True``, which timm resolved to those weights.
    """

    config_cls = SXConfig
    scenario_kinds = ("domain",)
    identifies_tasks = True
    #: The backbone of the published numbers (the paper profile's choice when the run names none).
    reference_backbone: ClassVar[str | None] = REF_SPROMPTS

    def __init__(self, backbone, kind, num_classes, num_tasks, config: SXConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.heads = PerTaskHeads(num_tasks, self.embed_dim, num_classes)
        self.identifier = KMeansTaskIdentifier(config.kmeans_k)

    # --- what a subclass provides
    def add_task_module(self, task_id: int) -> list[nn.Parameter]:
        """Create the PEFT module of domain ``task_id``; return its parameters."""
        raise NotImplementedError

    def peft_features(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Features ``(B, D)`` when sample b uses the module of domain ``task_ids[b]``."""
        raise NotImplementedError

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen, module-free feature used for k-means (subclasses that hook the backbone override)."""
        return query_features(self.backbone, x)

    def weight_decay_now(self) -> float:
        """The weight decay of the domain being trained: ``first_task_weight_decay`` on domain 0."""
        wd = getattr(self.cfg, "first_task_weight_decay", None)
        return wd if self.task_id == 0 and wd is not None else self.cfg.weight_decay

    def param_groups(self) -> list[dict]:
        """All trainable parameters in one group, at the current domain's weight decay."""
        return [{"params": self.trainable_parameters(), "weight_decay": self.weight_decay_now()}]

    # --- lifecycle
    def begin_task(self, task_id: int, classes: list[int]) -> None:
        super().begin_task(task_id, classes)
        for p in self.parameters():
            if id(p) not in self._pretrained_ids:
                p.requires_grad_(False)
        if self.cfg.shared_head and len(self.heads.heads):
            head = list(self.heads.heads[0].parameters())
        else:
            head = list(self.heads.add_head(self.seen.device).parameters())
        new = self.add_task_module(task_id) + head
        for p in new:
            p.requires_grad_(True)

    @torch.no_grad()
    def end_task(self, task_id: int, ctx: TaskContext) -> None:
        feats = []
        for x, _ in ctx.batches(ctx.task.train):
            with ctx.autocast():
                feats.append(self.query(x).float())
        self.identifier.add_task(task_id, torch.cat(feats), seed=ctx.seed + task_id)

    def _head_ids(self, tid: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(tid) if self.cfg.shared_head else tid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tid = torch.full((len(x),), self.task_id, dtype=torch.long, device=x.device)
        return self.heads(self.peft_features(x, tid), self._head_ids(tid))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        if self.eval_cfg.oracle_task_id and task_id is not None:
            tid = torch.full((len(x),), task_id, dtype=torch.long, device=x.device)
        else:
            tid = self.identifier.identify(self.query(x))
        self.last_task_ids = tid
        return self.mask_test_logits(self.heads(self.peft_features(x, tid), self._head_ids(tid)).float())
