"""SD-LoRA (Wu et al., ICLR 2025; WuYichen-97/SD-Lora-CL): decoupled LoRA, a direction and a magnitude per task.

Per task t, a LoRA update on the query and value rows of every block's fused ``attn.qkv`` (official
``backbone/lora.py`` ``_LoRA_qkv_timm_train``: ``qkv[:, :, :D] += new_q``, ``qkv[:, :, -D:] += new_v``),
with its *direction* and *magnitude* decoupled:

    W = W_0 + sum_{i<t} alpha_i * (B_i A_i / ||B_i A_i||_F) + alpha_t * B_t A_t

for each adapted weight (q and v separately, each with its own ``A`` (r x D) and ``B`` (D x r)). The
magnitudes ``alpha_i`` are scalars per task shared by every adapted weight (the official
``wrapped_param`` / ``wrapped_param_prev``), initialised at 0.8. While task t trains, the earlier
directions ``B_i A_i`` (``i < t``) are frozen and every ``alpha_i`` keeps learning; the current
update ``alpha_t B_t A_t`` is not normalised while it trains (``B_t`` starts at zero, where the
normalisation is undefined; the official code does the same), and becomes a normalised direction
when the next task begins. Evaluation after task t uses the model exactly as it trained.

Defaults from ``exps/sdlora_c100.json`` and ``models/sdlora.py`` (WuYichen-97/SD-Lora-CL, commit
8bacded): rank 10 (``update_network``), all blocks, SGD momentum 0.9 lr 0.008 for LoRA factors,
magnitudes and head alike, no weight decay (the optimizers pass none), 20 epochs, batch 128; the
step schedule's milestones (60/120/170 on the first task, 40/70 with gamma 0 later) are never
reached in 20 epochs, so the rate is constant. One linear head over the classes seen so far,
trained on the current task's logits only (``logits[:, known_classes:]``): our ``train_mask``.
No gradient clipping.

Deviations:

* Frozen directions are normalised by ``||B_i A_i||_F`` (the paper's normalised direction); the
  official code divides by ``||B_i||_F * ||A_i||_F`` (an upper bound of it).
* The official code re-creates the earlier magnitudes at 0.8 whenever a task begins (a fresh
  ``wrapped_param_prev``); here they keep their learned values ("their magnitudes keep learning").
* The official ``ortho_loss`` is computed but not added to the loss; it is left out. SD-LoRA-RR/KD
  (rank reduction, knowledge distillation) are not implemented.
* Reference backbone: the official code loads timm's untagged ``vit_base_patch16_224`` with timm
  1.0.9 (``requirements.txt``), i.e. ``augreg2_in21k_ft_in1k``, which :mod:`cl_peft_lib.backbones`
  does not register; the paper profile's default backbone is used until it does.

Names: SD-LoRA (ICLR 2025, openreview 5U1rlpX68A) first appeared on arXiv as "S-LoRA" (scalable
LoRA). It is not this library's ``slora``, the S-Prompts-with-LoRA of Wistuba et al. (one LoRA
adapter and head per domain, routed at test by k-means on frozen features,
:class:`~cl_peft_lib.methods.lora.SLoRA`): SD-LoRA keeps *every* task's update in one model, with no task identification at test.

Domain-incremental scenarios: accepted (the official configs are class-incremental splits only,
DomainNet too: ``exps/sdlora_dom.json``, 69 new classes per task). All domains share one head over
the same classes, nothing is masked, and no task identity is used at test: the one model sums
every domain's update.

Trainable parameters over the stream: per task ``blocks * 2 * r * 2D`` (A and B of q and v) plus
one magnitude, plus the head ``D * C + C``.

Chapter: ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..options import check_range
from .base import MethodConfig, Optimizer, Schedule
from .baselines import LinearHeadMethod
from .lora_native import QKVLoRAFields, fused_qkv_layers
from .registry import register_method


@dataclass
class SDLoRAConfig(MethodConfig, QKVLoRAFields):
    """SD-LoRA's settings (official ``exps/sdlora_c100.json``, ``models/sdlora.py``); ``rank`` (10) is r of every
    task's A and B, ``layers`` the adapted blocks (:class:`~.lora_native.QKVLoRAFields`).

    Attributes:
        alpha_init: initial magnitude of a task's update (official 0.8).
    """

    alpha_init: float = 0.8
    epochs: int = 20
    batch_size: int = 128
    optimizer: Optimizer = "sgd"
    lr: float = 0.008
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    train_mask: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "alpha_init", gt=0)


class SDLoRAFactors(nn.Module):
    """Every task's LoRA factors on the q and v rows of one fused ``attn.qkv`` (a forward hook).

    Task i holds ``A_i`` ``(2, r, D)`` and ``B_i`` ``(2, D, r)`` (index 0: q, 1: v). The hook adds
    ``sum_i s_i B_i A_i x`` to the q and v outputs, with the per-task, per-weight scales ``s`` given by
    the method (``alpha_i / ||B_i A_i||_F`` for frozen directions, ``alpha_t`` for the current one).

    Args:
        qkv: timm's fused ``nn.Linear(D, 3D)`` (hooked, not a submodule).
        rank: r.
    """

    def __init__(self, qkv: nn.Linear, rank: int) -> None:
        super().__init__()
        self.dim, self.rank = qkv.in_features, rank
        self.A, self.B = nn.ParameterList(), nn.ParameterList()
        self.scales: torch.Tensor | None = None  # (T, 2), set by the method for each forward
        self.handle = qkv.register_forward_hook(self._hook)

    def add_task(self, device: torch.device) -> list[nn.Parameter]:
        """New factors: A kaiming-uniform (fan_in = D, as nn.Linear and the official code), B zero."""
        A = torch.empty(2, self.rank, self.dim, device=device)
        for a in A:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.A.append(nn.Parameter(A))
        self.B.append(nn.Parameter(torch.zeros(2, self.dim, self.rank, device=device)))
        return [self.A[-1], self.B[-1]]

    def direction_norms(self) -> torch.Tensor:
        """``||B_i A_i||_F`` for every task and weight, ``(T, 2)``, via ``tr((B^T B)(A A^T))`` (r x r only)."""
        out = []
        for A, B in zip(self.A, self.B):
            AA, BB = A.float() @ A.float().transpose(1, 2), B.float().transpose(1, 2) @ B.float()
            out.append((AA * BB).sum((1, 2)).clamp(min=0).sqrt())
        return torch.stack(out)

    def _hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if self.scales is None or not len(self.A):
            return out
        x = inputs[0]
        A = torch.stack(list(self.A)).to(x.dtype)  # (T, 2, r, D)
        B = torch.stack(list(self.B)).to(x.dtype)  # (T, 2, D, r)
        h = torch.einsum("bnd,tjrd->bntjr", x, A)
        d = torch.einsum("bntjr,tjor,tj->bnjo", h, B, self.scales.to(x.dtype)).to(out.dtype)  # (.., 2, D)
        D = self.dim
        return torch.cat([out[..., :D] + d[..., 0, :], out[..., D:2 * D], out[..., 2 * D:] + d[..., 1, :]], dim=-1)


@register_method
class SDLoRA(LinearHeadMethod):
    """SD-LoRA: per task a LoRA direction (frozen after its task) and a magnitude (learning throughout)."""

    name = "sdlora"
    config_cls = SDLoRAConfig
    scenario_kinds = ("class", "domain")

    def __init__(self, backbone, kind, num_classes, num_tasks, config: SDLoRAConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.factors = nn.ModuleDict({n: SDLoRAFactors(m, config.rank)
                                      for n, m in fused_qkv_layers(backbone, config.layers).items()})
        self.alphas = nn.ParameterList()

    def begin_task(self, task_id: int, classes: list[int]) -> None:
        """Freeze every earlier direction (A, B); add task t's factors and magnitude; every magnitude trains."""
        super().begin_task(task_id, classes)
        for f in self.factors.values():
            for p in (*f.A, *f.B):
                p.requires_grad_(False)
            f.add_task(self.seen.device)
        self.alphas.append(nn.Parameter(torch.tensor(float(self.cfg.alpha_init), device=self.seen.device)))

    def scales(self, f: SDLoRAFactors) -> torch.Tensor:
        """``(T, 2)`` scales of one layer: ``alpha_i / ||B_i A_i||_F`` for ``i < t``, ``alpha_t`` for the current t."""
        T = len(self.alphas)
        alpha = torch.stack(list(self.alphas)).float()
        norms = f.direction_norms().detach()
        frozen = (torch.arange(T, device=alpha.device) < T - 1).unsqueeze(1)
        # an untrained direction (B = 0) adds 0
        inv = torch.where(norms > 0, 1 / norms.clamp(min=1e-30), torch.zeros_like(norms))
        return alpha.unsqueeze(1) * torch.where(frozen, inv, torch.ones_like(norms))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for f in self.factors.values():
            f.scales = self.scales(f)
        try:
            return super().features(x)
        finally:
            for f in self.factors.values():
                f.scales = None

    @classmethod
    def expected_trainable_params(cls, cfg: SDLoRAConfig | None, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """After T tasks: ``T * (blocks * 2 * r * 2D + 1) + D * C + C``."""
        cfg = cfg or cls.config_cls()
        return T * (cfg.blocks(depth) * 2 * cfg.rank * 2 * D + 1) + D * C + C
