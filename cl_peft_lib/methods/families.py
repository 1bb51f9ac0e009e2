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

Chapters: ``notebooks/03_prompt_tuning.ipynb`` and ``notebooks/04_lora.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .base import ContinualMethod, MethodConfig, Optimizer, Schedule, TaskContext
from ..options import check_range
from .selection import KeyedPool, KMeansTaskIdentifier, query_features


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
    """Keyed pool of PEFT modules, shared classifier, surrogate loss (L2P and L2L)."""

    config_cls = L2XConfig

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
        return ce - self.cfg.surrogate_weight * match, {"ce": float(ce.detach()), "match": float(match.detach())}

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

    Attributes:
        kmeans_k: centroids per domain for task identification (the true domain instead is the
            ``oracle_task_id`` evaluation setting: :class:`~cl_peft_lib.evaluation.EvalConfig`).
        shared_head: one classifier for all domains instead of one per domain (ablation; the
            PEFT modules stay per domain).
    """

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

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "kmeans_k", ge=1)


class SXMethod(ContinualMethod):
    """One PEFT module and one classifier per domain, routed by k-means (S-Prompts and S-LoRA)."""

    config_cls = SXConfig
    scenario_kinds = ("domain",)
    identifies_tasks = True

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
