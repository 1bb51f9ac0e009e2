"""InfLoRA (Liang & Li, CVPR 2024): interference-free LoRA with a designed, not trained, down-projection.

Per task t and adapted block, a LoRA branch ``B_t A_t`` is added to the *key and value* outputs of
the attention (official code: ``lora_A_k``/``lora_B_k`` and ``lora_A_v``/``lora_B_v`` beside the
fused qkv, queries untouched; here rows ``D..3D-1`` of timm's fused ``attn.qkv``):

* ``A_t`` (``r x D``, shared by k and v as in the official code) is *designed* before training from
  the current task's input covariance ``C_t = E[x x^T]`` (tokens entering ``attn.qkv``), projected
  off the subspace ``M`` earlier tasks occupy: ``A_t = top-r left singular vectors of (I - M M^T) C_t``,
  transposed and divided by ``sqrt(3)`` (the official scaling). Its rows are orthogonal to ``M``, so
  training ``B_t`` cannot change what the layer does on earlier tasks' inputs (to the energy
  threshold below).
* only ``B_t`` (``2D x r``, zero-initialised: k and v rows) and the classifier train;
* after the task the branch is merged into the qkv weights (``W <- W_0 + sum_t B_t A_t``), so
  inference costs exactly the plain ViT's; the factors stay (buffers/parameters) for checkpoints.
* the subspace memory is updated from the task's inputs with the energy criterion of GPM/DualGPM
  (Saha et al. 2021; Liang & Li 2023): directions of ``(I - M M^T) C_t`` are added to ``M`` until
  ``epsilon_t`` of ``C_t``'s energy (sum of squared singular values) is captured. DualGPM stores
  either ``M`` or its complement, whichever is smaller; both give the same projector, so we keep
  ``M`` (a fixed ``D x D`` buffer with a column count). ``epsilon_t`` grows linearly from
  ``threshold`` (0.95) to ``threshold_end`` (1.0) over the tasks (official ``lamb``/``lame``).

Classifier: the official ``SiNet`` has one linear head per task over its classes, trains only the
current one (``classifier_pool[t]``, cross-entropy on the task's classes) and scores all heads'
logits concatenated at test: that is one linear head over all classes with the logits of other
tasks masked in training (our ``train_mask``) and all logits at test (our default scoring).

Defaults from ``configs/cifar100_inflora.json`` (liangyanshuo/InfLoRA, commit 3c97364): rank 10,
Adam lr 0.0005 (``init_lr`` = ``lrate``), 20 epochs, batch 128, weight decay 0, cosine decay
(``utils/schedulers.CosineSchedule``, per epoch; ours per step), ``lamb`` 0.95, ``lame`` 1.0; no
gradient clipping. Algorithm from ``methods/inflora.py`` (commit 0d102e9: ``_train``,
``update_DualGPM``) and ``models/vit_inflora.py`` (commit 2c77454: ``Attention_LoRA``).

Deviations (documented, measured nowhere yet):

* The official code designs ``A_t`` from the covariance of the *whole* task, in a pass before
  training. The shared loop gives a method no data before training (``begin_task`` gets class ids
  only), so ``A_t`` is designed from the task's *first training batch* (``B * N`` tokens: 128 x 197
  on the paper track), on all ranks' share of it; :meth:`InfLoRA.design` takes any batches, should
  the loop ever offer a pass before training. The memory update after the task uses the whole task.
* The official first-task rule keeps one direction fewer than the later-task rule (``r = #{cumsum <
  eps}``); kept as is.
* Heads start as ours do (truncated normal 0.02), not torch's default ``nn.Linear`` init.

Domain-incremental scenarios: accepted. The same label space is shared by all domains, so nothing is
masked; no task identity is needed at test (the merged model serves every domain), as in the
official ``inflora_domain.py``, whose GPM memory equals the one used here.

Trainable parameters over the stream: the trained ``B_t`` of every task and adapted block
(``T * blocks * r * 2D``) plus the head (``D * C + C``); the designed ``A_t`` are buffers.

Chapter: ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar, Iterable

import torch
from torch import nn

from .. import distributed as D
from ..options import check_range
from .base import MethodConfig, Optimizer, Schedule, TaskContext
from .baselines import LinearHeadMethod
from .lora_native import QKVLoRAFields, fused_qkv_layers
from .registry import register_method

#: timm's ViT-B/16 in21k AugReg weights: the official ``vit_base_patch16_224_in21k`` points to
#: ``augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`` (models/vit_inflora.py).
REF_INFLORA = "vit_base_patch16_224.augreg_in21k"


@dataclass
class InfLoRAConfig(MethodConfig, QKVLoRAFields):
    """InfLoRA's settings (official ``configs/cifar100_inflora.json``); ``rank`` (10) is r, the rows of each
    designed ``A_t``; ``layers`` the adapted blocks (:class:`~.lora_native.QKVLoRAFields`).

    Attributes:
        threshold: epsilon of the subspace memory after the first task (official ``lamb``).
        threshold_end: epsilon approached after the last task (official ``lame``); epsilon_t =
            ``threshold + (threshold_end - threshold) * t / T``.
    """

    threshold: float = 0.95
    threshold_end: float = 1.0
    epochs: int = 20
    batch_size: int = 128
    optimizer: Optimizer = "adam"
    lr: float = 0.0005
    weight_decay: float = 0.0
    schedule: Schedule = "cosine"
    train_mask: bool = True
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "threshold", gt=0, le=1)
        check_range(self, "threshold_end", ge=self.threshold, le=1, note=" (threshold)")


class InfLoRABranches(nn.Module):
    """InfLoRA on one fused ``attn.qkv``: per task a designed ``A_t`` and a trained ``B_t`` on the k, v rows.

    The module hooks the linear layer (not a submodule: its weights stay the backbone's). While a
    branch is *active* (the task being trained) the hook adds ``B_t A_t x`` to rows ``D..3D-1``;
    merged branches live in the weights. While *recording*, the hook accumulates ``sum x x^T``.

    Args:
        qkv: timm's fused ``nn.Linear(D, 3D)``.
        rank: r.
    """

    def __init__(self, qkv: nn.Linear, rank: int) -> None:
        super().__init__()
        self.dim, self.rank = qkv.in_features, rank
        self._qkv = [qkv]
        self.B = nn.ParameterList()
        self.register_buffer("w0", qkv.weight.detach()[self.dim:].clone(), persistent=False)
        self.register_buffer("basis", torch.zeros(self.dim, self.dim))  # M: first `k` columns, orthonormal
        self.register_buffer("k", torch.zeros((), dtype=torch.long))
        self.active: int | None = None
        self.recording = False
        self._xx: torch.Tensor | None = None
        self._n = 0
        self.handle = qkv.register_forward_hook(self._hook)

    @property
    def num_tasks(self) -> int:
        return len(self.B)

    def A(self, t: int) -> torch.Tensor:
        """The designed down-projection of task t, ``(r, D)``."""
        return getattr(self, f"A{t}")

    def occupied(self) -> torch.Tensor:
        """M, the orthonormal basis ``(D, k)`` of the input subspace earlier tasks occupy."""
        return self.basis[:, : int(self.k)]

    def add_task(self) -> nn.Parameter:
        """A zero ``A_t`` (designed later) and a zero ``B_t`` (trained); the new branch is active."""
        dev = self.w0.device
        self.register_buffer(f"A{self.num_tasks}", torch.zeros(self.rank, self.dim, device=dev))
        self.B.append(nn.Parameter(torch.zeros(2 * self.dim, self.rank, device=dev)))
        self.active = self.num_tasks - 1
        return self.B[-1]

    def _hook(self, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        x = inputs[0]
        if self.recording:
            xf = x.detach().float().reshape(-1, self.dim)
            with torch.autocast(x.device.type, enabled=False):  # float32 (as the official code): under fp16
                xx = xf.T @ xf                                   # autocast the sum overflows to inf
            self._xx = xx if self._xx is None else self._xx + xx
            self._n += len(xf)
        if self.active is None:
            return out
        t = self.active
        d = (x @ self.A(t).to(x.dtype).T) @ self.B[t].to(x.dtype).T
        return torch.cat([out[..., : self.dim], out[..., self.dim:] + d.to(out.dtype)], dim=-1)

    def take_covariance(self) -> torch.Tensor:
        """``E[x x^T]`` over the tokens recorded since the last call (summed over ranks), float64."""
        xx = self._xx if self._xx is not None else torch.zeros(self.dim, self.dim, device=self.w0.device)
        n = torch.tensor([float(self._n)], device=xx.device)
        if D.world_size() > 1:
            import torch.distributed as dist

            dist.all_reduce(xx)
            dist.all_reduce(n)
        self._xx, self._n = None, 0
        return xx.double() / n.clamp(min=1).double()

    @torch.no_grad()
    def design(self, t: int, cov: torch.Tensor) -> None:
        """``A_t`` = top-r left singular vectors of ``(I - M M^T) C`` (rows), divided by sqrt(3)."""
        M = self.occupied().double()
        proj = cov - M @ (M.T @ cov)
        U = torch.linalg.svd(proj)[0]
        self.A(t).copy_((U[:, : self.rank].T / math.sqrt(3)).to(self.w0.dtype))

    @torch.no_grad()
    def update_memory(self, cov: torch.Tensor, eps: float) -> int:
        """Add to M the fewest directions of ``(I - M M^T) C`` that capture ``eps`` of C's energy; returns how many."""
        k = int(self.k)
        M = self.occupied().double()
        total = (torch.linalg.svdvals(cov) ** 2).sum()
        U, S, _ = torch.linalg.svd(cov - M @ (M.T @ cov))
        ratio = S ** 2 / total
        if k == 0:  # the official first-task rule: #{j: sum_{i<=j} ratio_i < eps}, at least 1
            r = max(int((torch.cumsum(ratio, 0) < eps).sum()), 1)
        else:  # the fewest r with captured + sum_{i<r} ratio_i >= eps
            before = (1 - ratio.sum()) + torch.cumsum(ratio, 0) - ratio
            r = int((before < eps).sum())
        r = min(r, self.dim - k)
        self.basis[:, k:k + r] = U[:, :r].to(self.basis.dtype)
        self.k.fill_(k + r)
        return r

    @torch.no_grad()
    def merge(self, n: int) -> None:
        """The k, v rows of the weights become ``W_0 + sum_{t<n} B_t A_t`` (recomputed from W_0: exact, any order)."""
        w = self._qkv[0].weight
        delta = torch.zeros_like(self.w0, dtype=torch.float)
        for t in range(n):
            delta += self.B[t].float() @ self.A(t).float()
        w[self.dim:] = (self.w0.float() + delta).to(w.dtype)
        if self.active is not None and self.active < n:
            self.active = None


@register_method
class InfLoRA(LinearHeadMethod):
    """InfLoRA: per task a LoRA branch on attention k/v with designed ``A_t``, merged after the task."""

    name = "inflora"
    config_cls = InfLoRAConfig
    scenario_kinds = ("class", "domain")
    #: The backbone of the published numbers (the paper profile's choice when the run names none).
    reference_backbone: ClassVar[str | None] = REF_INFLORA

    def __init__(self, backbone, kind, num_classes, num_tasks, config: InfLoRAConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.branches = nn.ModuleDict({n: InfLoRABranches(m, config.rank)
                                       for n, m in fused_qkv_layers(backbone, config.layers).items()})
        self.register_buffer("n_designed", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_merged", torch.zeros((), dtype=torch.long))
        self._n_designed = 0  # n_designed on the host: reading the buffer in every step would wait for the GPU

    def begin_task(self, task_id: int, classes: list[int]) -> None:
        super().begin_task(task_id, classes)
        for br in self.branches.values():
            for B in br.B:
                B.requires_grad_(False)
            br.add_task()  # trainable, zero

    def epsilon(self, task_id: int) -> float:
        """The memory's energy threshold after task ``task_id`` (linear from ``threshold`` to ``threshold_end``)."""
        c = self.cfg
        return c.threshold + (c.threshold_end - c.threshold) * task_id / self.num_tasks

    def _record(self, batches: Iterable[torch.Tensor], autocast=nullcontext) -> dict[str, torch.Tensor]:
        """``E[x x^T]`` of every adapted layer's inputs over ``batches`` (one forward each, no gradient)."""
        for br in self.branches.values():
            br.recording = True
        try:
            with torch.no_grad():
                for x in batches:
                    with autocast():
                        self.features(x)
        finally:
            for br in self.branches.values():
                br.recording = False
        return {n: br.take_covariance() for n, br in self.branches.items()}

    @torch.no_grad()
    def design(self, batches: Iterable[torch.Tensor]) -> None:
        """Design ``A_t`` of the current task in every block from the inputs of ``batches`` (the current
        branch is zero, so they see the model of the earlier tasks)."""
        covs = self._record(batches)
        for n, br in self.branches.items():
            br.design(self.task_id, covs[n])
        self.n_designed.fill_(self.task_id + 1)
        self._n_designed = self.task_id + 1

    def observe(self, x: torch.Tensor, y: torch.Tensor):
        if self._n_designed <= self.task_id:  # the first batch of the task (see the module docstring)
            self.design([x])
        return super().observe(x, y)

    @torch.no_grad()
    def end_task(self, task_id: int, ctx: TaskContext) -> None:
        """Merge the branch into the weights, then update the subspace memory from the task's inputs."""
        if self._n_designed <= task_id:  # never trained (e.g. no batch): nothing to merge but zeros
            self.n_designed.fill_(task_id + 1)
            self._n_designed = task_id + 1
        for br in self.branches.values():
            br.merge(task_id + 1)
        self.n_merged.fill_(task_id + 1)
        covs = self._record((x for x, _ in ctx.batches(ctx.task.train)), ctx.autocast)
        for n, br in self.branches.items():
            br.update_memory(covs[n], self.epsilon(task_id))

    def load_checkpoint_state(self, state) -> None:
        super().load_checkpoint_state(state)
        self._n_designed = int(self.n_designed)
        n = int(self.n_merged)
        for br in self.branches.values():
            br.merge(n)
            br.active = None if br.num_tasks <= n else br.num_tasks - 1

    def extra_metrics(self) -> dict:
        return {"memory_dims": {n: int(br.k) for n, br in self.branches.items()}}

    @classmethod
    def expected_trainable_params(cls, cfg: InfLoRAConfig | None, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """After T tasks: ``T * blocks * r * 2D`` (the trained B's) ``+ D * C + C`` (head); A's are designed."""
        cfg = cfg or cls.config_cls()
        return T * cfg.blocks(depth) * cfg.rank * 2 * D + D * C + C
