"""RanPAC (McDonnell et al., NeurIPS 2023): random projections and a ridge classifier on frozen features.

No gradient step: after each task the frozen features ``f(x)`` (dimension D) go through a
fixed random projection with a ReLU, ``h = relu(f W)`` with ``W`` (D x M) Gaussian; the Gram
matrix ``G = sum h h^T`` and the class sums ``C = sum h y^T`` (y one-hot) accumulate over every
task seen; the classifier is the ridge solution ``W_o = (G + lambda I)^-1 C``, with ``lambda``
chosen per task from a grid on that task's training data. Because ``G`` and ``C`` are sums,
the classifier after T tasks does not depend on how the data were split into tasks (for a
fixed ``lambda``). Works alike for class- and domain-incremental scenarios.

Reference: RanPAC/RanPAC ``RanPAC.py`` (commit 698e00c: ``setup_RP``, ``replace_fc``,
``optimise_ridge_parameter``), ``inc_net.py`` ``CosineLinear`` (``use_RP``), and
``args/cifar224_publish.csv`` (commit a460ac0: ``M=10000``). Left out: the reference's optional
"first-session adaptation" (a PETL module trained by SGD on task 0 before projecting); here the
backbone stays frozen throughout, the reference's ``model_name=ncm, use_RP=True`` rows.

Chapter: ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..options import check_range
from .base import ContinualMethod, MethodConfig, TaskContext
from .registry import register_method

#: The reference's ridge grid: ``10.0 ** np.arange(-8, 9)`` (``optimise_ridge_parameter``).
RIDGE_GRID: tuple[float, ...] = tuple(10.0 ** k for k in range(-8, 9))
#: Rows projected at once (bounds the memory of ``h`` to ``_CHUNK x M`` floats).
_CHUNK = 4096


def ridge_solve(G: torch.Tensor, C: torch.Tensor, ridge: float) -> torch.Tensor:
    """``W_o = (G + ridge I)^-1 C`` in float64 (a solve, not an inverse, as the reference), shape ``(M, C)``."""
    G64 = G.double()
    return torch.linalg.solve(G64 + ridge * torch.eye(len(G64), dtype=G64.dtype, device=G64.device), C.double())


def select_ridge(H: torch.Tensor, Y: torch.Tensor, ridges: tuple[float, ...], fit_fraction: float = 0.8) -> float:
    """The reference's choice of ``lambda``: fit on the first ``fit_fraction`` of the rows, score the
    mean squared error of the one-hot targets on the rest, keep the grid value with the least error
    (the first on ties).

    Args:
        H: ``(n, M)`` projected features, rows in the order to split (the caller shuffles).
        Y: ``(n, C)`` one-hot targets.
        ridges: the grid.
        fit_fraction: the share of rows fitted (the reference's ``int(n * 0.8)``).
    """
    n_fit = int(len(H) * fit_fraction)
    if n_fit == 0 or n_fit == len(H):
        return float(ridges[len(ridges) // 2])  # nothing to validate on: the grid's middle (1.0 for the default)
    H64, Y64 = H.double(), Y.double()
    # one eigendecomposition G = V diag(e) V^T serves the whole grid: (G + lambda I)^-1 = V diag(1/(e + lambda)) V^T
    e, V = torch.linalg.eigh(H64[:n_fit].T @ H64[:n_fit])
    e = e.clamp(min=0)  # G is positive semi-definite; round-off below 0 is 0
    A, B = H64[n_fit:] @ V, V.T @ (H64[:n_fit].T @ Y64[:n_fit])
    losses = [F.mse_loss((A / (e + r)) @ B, Y64[n_fit:]).item() for r in ridges]
    return float(ridges[min(range(len(ridges)), key=losses.__getitem__)])


@dataclass
class RanPACConfig(MethodConfig):
    """RanPAC without first-session adaptation: training-free (``epochs=0``, like ``ncm``).

    Attributes:
        proj_dim: M, the random projection's width (the reference's ``M=10000``); 0 projects nothing
            (``h = f``, the reference's ``M=0`` rows: ridge regression on the raw features).
        ridges: the grid ``lambda`` is chosen from at the end of each task (the reference's 10^-8 .. 10^8).
        ridge: a fixed ``lambda`` instead of the per-task choice (None: choose from ``ridges``).
        ridge_fit_fraction: the share of a task's (shuffled) training features fitted when scoring the
            grid; the rest is held out (the reference's 0.8).
    """

    proj_dim: int = 10000
    ridges: tuple[float, ...] = RIDGE_GRID
    ridge: float | None = None
    ridge_fit_fraction: float = 0.8
    epochs: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "proj_dim", ge=0)
        check_range(self, "ridge", gt=0)
        check_range(self, "ridge_fit_fraction", gt=0, lt=1)
        if not self.ridges or min(self.ridges) <= 0:
            raise ValueError(f"ridges must be a non-empty tuple of values > 0, got {self.ridges}")


@register_method
class RanPAC(ContinualMethod):
    """Frozen features -> fixed ``relu(f W)`` -> ridge classifier from accumulated class statistics.

    What is stored: ``W_rand`` (D x M, N(0, 1) as the reference's ``torch.randn``, drawn once from
    the run's seed: a buffer, fixed, not counted as trainable), the running sums ``G`` (M x M) and
    ``C_sum`` (M x C) (buffers in float64, where the reference sums in float32: with the
    grid's smallest lambda 1e-8 float32 sums decide the solution; the checkpoint holds them,
    ``8 M (M + C)`` bytes, 800 MB at M=10000) and the classifier ``W_o`` (M x C), a parameter that
    no optimizer touches (it is solved in closed form) and the one thing counted as learned.

    Trainable parameters: ``M * C`` (``D * C`` with ``proj_dim=0``), independent of T.

    Cost per task: one float64 eigendecomposition of an M x M matrix (the whole grid, :func:`select_ridge`)
    and one solve; M=2000 on 1,200 features took 2.4 s for the grid on a 2-core CPU, and the cubic cost
    makes the reference's M=10000 a GPU setting.

    Scoring: logits ``h W_o`` over the classes seen so far; unseen classes are -inf, as the reference's
    head has rows for seen classes only (``update_fc(self._classes_seen_so_far)``; ``Wo[0:...]``). The
    reference's ``sigma`` (a constant 1 after ``reset_parameters``) is left out.
    """

    name = "ranpac"
    config_cls = RanPACConfig
    #: RanPAC's ViT rows use timm 0.6.12 ``vit_base_patch16_224_in21k`` (``inc_net.py``; ``utils/requirements.txt``),
    #: the AugReg ImageNet-21k weights: the paper profile's default backbone.
    reference_backbone: ClassVar[str | None] = "vit_base_patch16_224.augreg_in21k"

    def __init__(self, backbone, kind, num_classes, num_tasks, config: RanPACConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        D, M = self.embed_dim, config.proj_dim
        width = M if M > 0 else D
        self.register_buffer("W_rand", torch.randn(D, M) if M > 0 else torch.empty(D, 0))
        self.register_buffer("G", torch.zeros(width, width, dtype=torch.float64))
        self.register_buffer("C_sum", torch.zeros(width, num_classes, dtype=torch.float64))
        self.W_o = nn.Parameter(torch.zeros(width, num_classes), requires_grad=False)
        self.ridge_history: list[float] = []

    @classmethod
    def expected_trainable_params(cls, cfg: RanPACConfig, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """The closed form of :meth:`num_trainable`: ``W_o`` only (``M*C``; ``D*C`` without projection)."""
        return (cfg.proj_dim if cfg.proj_dim > 0 else D) * C

    def trainable_parameters(self) -> list[nn.Parameter]:
        return []  # nothing is trained by gradient; W_o is solved at the end of each task

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """``h = relu(f W)`` in float32 (outside autocast), ``(B, M)``; ``f`` itself with ``proj_dim=0``."""
        with torch.autocast(f.device.type, enabled=False):
            f = f.float()
            return F.relu(f @ self.W_rand) if self.W_rand.shape[1] > 0 else f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.project(self.features(x))
        with torch.autocast(h.device.type, enabled=False):
            return h @ self.W_o

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        return self(x).float().masked_fill(~self.seen, float("-inf"))

    @torch.no_grad()
    def accumulate(self, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add features ``f`` (n, D) with labels ``y`` to ``G`` and ``C_sum``; returns ``h`` (n, M)."""
        hs = []
        for i in range(0, len(f), _CHUNK):
            h = self.project(f[i:i + _CHUNK])
            h64 = h.double()
            self.G += h64.T @ h64
            self.C_sum += h64.T @ F.one_hot(y[i:i + _CHUNK], self.num_classes).double()
            hs.append(h)
        return torch.cat(hs)

    @torch.no_grad()
    def solve(self, ridge: float) -> None:
        """``W_o = (G + lambda I)^-1 C`` from the statistics accumulated so far."""
        self.W_o.copy_(ridge_solve(self.G, self.C_sum, ridge).to(self.W_o.dtype))

    @torch.no_grad()
    def end_task(self, task_id: int, ctx: TaskContext) -> None:
        feats, labels = [], []
        for x, y in ctx.batches(ctx.task.train):
            with ctx.autocast():
                feats.append(self.features(x).float())
            labels.append(y)
        f, y = torch.cat(feats), torch.cat(labels)
        h = self.accumulate(f, y)
        ridge = self.cfg.ridge
        if ridge is None:  # the reference splits its shuffled loader's order; ours is seeded per task
            g = torch.Generator().manual_seed(ctx.seed * 1009 + task_id)
            perm = torch.randperm(len(h), generator=g).to(h.device)
            ridge = select_ridge(h[perm], F.one_hot(y[perm], self.num_classes), tuple(self.cfg.ridges),
                                 self.cfg.ridge_fit_fraction)
        self.ridge_history.append(ridge)
        self.solve(ridge)

    def extra_metrics(self) -> dict:
        return {"ridge_per_task": list(self.ridge_history)}

    def get_extra_state(self):
        return {"ridge_history": list(self.ridge_history)}

    def set_extra_state(self, state) -> None:
        self.ridge_history = list(state["ridge_history"])
