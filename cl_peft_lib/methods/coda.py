"""CODA-Prompt (Smith et al., CVPR 2023): prompts assembled from weighted components.

At each prompted block l, a pool of M components ``P_m`` (L tokens each) with keys ``K_m`` and
attention vectors ``A_m`` (both of dimension D); the frozen, prompt-free [CLS] query ``q(x)``
weights every component by ``alpha_m = cos(q ⊙ A_m, K_m)`` (no top-k, no softmax), and the
block gets the prompt ``sum_m alpha_m P_m`` as prefix tuning: its first L/2 tokens are prefix
keys, the last L/2 prefix values (:func:`~.prompts.prefix_block`). Components are allocated per
task: task t trains its slice of ``M // T`` components, the earlier slices are frozen (the
reference detaches them) but still weight in; a new slice starts orthonormal to the earlier
ones (Gram-Schmidt), and an optional penalty ``ortho_mu`` keeps ``K``, ``A`` and ``P`` near
orthogonal. One linear head over all classes reads the [CLS] output; training logits are
masked to the current task's classes.

Reference: GT-RIPL/CODA-Prompt ``models/zoo.py`` ``CodaPrompt`` (commit 605ac87, the latest:
Gram-Schmidt re-initialisation of each new slice in ``process_task_count``, ``ortho_penalty``
without the older 1e-6 factor), ``learners/prompt.py`` (commit 22948d2: masked logits, Adam over
prompts and head), ``configs/cifar-100_prompt.yaml`` (22948d2) and ``experiments/imagenet-r.sh``
(605ac87: ``--prompt_param 100 8 0.0``, "with updated code, now can be 0!").

Chapter: ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..backbones import REF_SPROMPTS
from ..options import check_range
from .base import ContinualMethod, MethodConfig, Optimizer, Schedule
from .prompts import embed_tokens, prefix_block
from .registry import register_method
from .selection import query_features


def orthonormal_rows(n: int, dim: int, previous: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random unit rows of length ``dim``, orthogonal to each other and to the span of ``previous``.

    The reference (``CodaPrompt.gram_schmidt``) draws Gaussian vectors and subtracts their projections
    on the earlier components; here the span of the earlier rows is projected out exactly (a QR basis),
    which is the same while the earlier rows are orthogonal and stays exact once training has moved them.
    When ``n`` more rows do not fit into the ``dim`` dimensions left, the new rows are orthonormal among
    themselves only (a warning says so).

    Args:
        n: rows to draw. dim: their length.
        previous: ``(k, dim)`` earlier rows, or None.
    """
    R = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    if previous is not None and len(previous):
        basis, _ = torch.linalg.qr(previous.detach().double().cpu().T)  # (dim, k) orthonormal columns
        if basis.shape[1] + n <= dim:
            R = R - (R @ basis) @ basis.T
        else:
            warnings.warn(f"CODA-Prompt: {basis.shape[1]} + {n} components do not fit in {dim} dimensions; "
                          f"the new ones are orthonormal among themselves only", stacklevel=2)
    if n > dim:
        return F.normalize(R, dim=1).float()
    Q, Rr = torch.linalg.qr(R.T)  # Gram-Schmidt of the rows, signs fixed so that it is deterministic
    return (Q * torch.sign(torch.diagonal(Rr)).unsqueeze(0)).T.float()


def ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """``mean((t t^T - I)^2)`` over the rows of ``t`` (the reference's ``ortho_penalty``)."""
    t = t.float()
    return ((t @ t.T - torch.eye(len(t), device=t.device)) ** 2).mean()


@dataclass
class CODAPromptConfig(MethodConfig):
    """CODA-P's settings: ``--prompt_param 100 8 0.0`` and ``configs/cifar-100_prompt.yaml``.

    Adam (beta1 = ``momentum`` 0.9) lr 0.001 unscaled, batch 128, 20 epochs, cosine schedule, no weight
    decay, no gradient clipping, logits masked to the current task (``learners/prompt.py``). The reference's
    cosine is ``lr * cos(99 pi e / (200 (K - 1)))`` stepped per epoch (a quarter period, ending near 0.016
    lr); ours is the loop's half-period ``0.5 (1 + cos)`` per step. The offline profile keeps the 20 epochs.

    Attributes:
        pool_size: M, components per prompted block (``100``); task t owns components
            ``t*M//T .. (t+1)*M//T - 1``.
        prompt_length: L, tokens per component (``8``), even: L/2 prefix keys and L/2 prefix values.
        ortho_mu: weight of the orthogonality penalty (``0.0`` in the latest code; the older
            ``experiments/cifar-100.sh`` used 0.1 with a penalty scaled by 1e-6).
        layers: the prompted blocks (``e_layers = [0,1,2,3,4]``).
    """

    pool_size: int = 100
    prompt_length: int = 8
    ortho_mu: float = 0.0
    layers: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 20
    batch_size: int = 128
    optimizer: Optimizer = "adam"
    lr: float = 0.001
    weight_decay: float = 0.0
    schedule: Schedule = "cosine"
    train_mask: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "pool_size", ge=1)
        check_range(self, "prompt_length", ge=2)
        check_range(self, "ortho_mu", ge=0)
        if self.prompt_length % 2:
            raise ValueError(f"prompt_length must be even (L/2 prefix keys and L/2 prefix values), "
                             f"got {self.prompt_length}")
        if not self.layers or min(self.layers) < 0 or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct block indices >= 0, got {self.layers}")


class ComponentSlice(nn.Module):
    """One task's components at every prompted block: ``P`` (|layers|, n, L, D), ``K`` and ``A`` (|layers|, n, D)."""

    def __init__(self, layers: int, n: int, length: int, dim: int) -> None:
        super().__init__()
        self.P = nn.Parameter(torch.zeros(layers, n, length, dim))
        self.K = nn.Parameter(torch.zeros(layers, n, dim))
        self.A = nn.Parameter(torch.zeros(layers, n, dim))


@register_method
class CODAPrompt(ContinualMethod):
    """CODA-Prompt: per-sample prompts as query-weighted sums of per-task components, prefix tuning.

    Trainable parameters (the whole pool is allocated at the start, as the reference does):
    ``|layers| * (M // T) * T * (L*D + 2*D)`` (components, keys, attention vectors) ``+ D*C + C`` (head).

    ``reference_backbone``: timm 0.4.12's ``vit_base_patch16_224`` (``models/zoo.py`` ``ViTZoo``,
    ``requirements.txt``), the AugReg in21k model fine-tuned on in1k, the weights S-Prompts uses.
    """

    name = "coda"
    config_cls = CODAPromptConfig
    reference_backbone: ClassVar[str | None] = REF_SPROMPTS

    def __init__(self, backbone, kind, num_classes, num_tasks, config: CODAPromptConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        depth = len(backbone.blocks)
        bad = sorted(i for i in config.layers if i >= depth)
        if bad:
            raise ValueError(f"coda: prompt layers {bad} do not exist in this {depth}-block backbone; "
                             f"choose layers in 0..{depth - 1} (e.g. layers=[0, 1])")
        if not all(type(b) is Block for b in backbone.blocks):
            raise TypeError("coda hooks timm's standard ViT Block; this backbone uses another block type")
        self.per_task = config.pool_size // num_tasks
        if self.per_task < 1:
            raise ValueError(f"coda: pool_size={config.pool_size} gives no component to each of {num_tasks} tasks; "
                             f"use pool_size >= {num_tasks}")
        self.layers = list(config.layers)
        self.slices = nn.ModuleList(ComponentSlice(len(self.layers), self.per_task, config.prompt_length,
                                                   self.embed_dim) for _ in range(num_tasks))
        self.head = nn.Linear(self.embed_dim, num_classes)  # torch's default init, as the reference's nn.Linear
        self.slices.requires_grad_(False)

    @classmethod
    def expected_trainable_params(cls, cfg: CODAPromptConfig, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """The closed form of :meth:`num_trainable` for a scenario of T tasks (constant along the stream)."""
        n = (cfg.pool_size // T) * T
        return len(cfg.layers) * n * (cfg.prompt_length * D + 2 * D) + D * C + C

    # ---------------------------------------------------------------- lifecycle
    @torch.no_grad()
    def begin_task(self, task_id: int, classes: list[int]) -> None:
        super().begin_task(task_id, classes)
        self.slices.requires_grad_(False)
        new = self.slices[task_id]
        for name in ("P", "K", "A"):  # Gram-Schmidt against the earlier slices, per block
            for j in range(len(self.layers)):
                old = [getattr(s, name)[j].flatten(1) for s in self.slices[:task_id]]
                rows = orthonormal_rows(self.per_task, getattr(new, name)[j][0].numel(),
                                        torch.cat(old) if old else None)
                getattr(new, name)[j].copy_(rows.view_as(getattr(new, name)[j]))
        new.requires_grad_(True)

    def components(self, upto: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``P`` (|layers|, n, L, D), ``K``, ``A`` (|layers|, n, D) of slices ``0..upto`` (n = (upto+1) M/T)."""
        s = self.slices[:upto + 1]
        return (torch.cat([x.P for x in s], 1), torch.cat([x.K for x in s], 1), torch.cat([x.A for x in s], 1))

    @staticmethod
    def weights(q: torch.Tensor, K: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
        """``alpha (B, n) = cos(q ⊙ A_m, K_m)`` for one block's keys ``K`` and attention vectors ``A`` (n, D)."""
        return torch.einsum("bnd,nd->bn", F.normalize(q.unsqueeze(1) * A, dim=2), F.normalize(K, dim=1))

    def peft_features(self, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """[CLS] features ``(B, D)`` with the prompts assembled from query ``q`` (B, D)."""
        vit = self.backbone
        P, K, A = self.components(max(self.task_id, 0))
        q = q.float()
        t = embed_tokens(vit, x)
        for i, blk in enumerate(vit.blocks):
            if i in self.layers:
                j = self.layers.index(i)
                prompt = torch.einsum("bn,nld->bld", self.weights(q, K[j], A[j]), P[j])  # (B, L, D)
                t = prefix_block(blk, t, prompt.unflatten(1, (2, -1)))  # first L/2 keys, last L/2 values
            else:
                t = blk(t)
        return vit.forward_head(vit.norm(t), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.peft_features(x, query_features(self.backbone, x)))

    def ortho_loss(self) -> torch.Tensor:
        """``ortho_mu * sum_l [pen(K_l) + pen(A_l) + pen(P_l)]`` over the components in use."""
        P, K, A = self.components(max(self.task_id, 0))
        pen = sum(ortho_penalty(K[j]) + ortho_penalty(A[j]) + ortho_penalty(P[j].flatten(1))
                  for j in range(len(self.layers)))
        return self.cfg.ortho_mu * pen

    def observe(self, x: torch.Tensor, y: torch.Tensor):
        ce = F.cross_entropy(self.mask_train_logits(self(x)).float(), y)
        if self.cfg.ortho_mu > 0:
            ortho = self.ortho_loss()
            return ce + ortho, {"ce": ce.detach(), "ortho": ortho.detach()}
        return ce, {"ce": ce.detach()}
