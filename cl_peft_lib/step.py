"""One optimisation step of the continual-learning loop (:meth:`cl_peft_lib.loop.Runner.train_task`), and
what it is built from: the optimizer and schedule of a method config, the update (backward, gradient
averaging over ranks, clipping, optimizer and scheduler step), and the test of the training loss for
NaN/inf, which a :class:`LossWatch` makes every ``$CL_PEFT_LOSS_CHECK_EVERY`` steps instead of after
every step (each test waits for the GPU). The benchmark suite times exactly this step
(``benchmarks/clbench/micro.py``: ``loop_step``). :mod:`cl_peft_lib.loop` re-exports every name.

Chapter: README (``step.py``: the loop's step).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable

import torch

from . import distributed as D
from .methods import ContinualMethod, MethodConfig
from .utils import autocast


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; finished tasks' results are kept."""


def build_optimizer(cfg: MethodConfig, groups: list[dict], total_steps: int):
    """Optimizer and per-step scheduler from a method config.

    A group with its own ``"lr"`` (already batch-scaled by the method, e.g. L2L's LoRA factors) or
    ``"weight_decay"`` keeps it; the others get ``cfg.effective_lr`` and ``cfg.weight_decay``. The
    cosine schedule scales every group's own rate.
    """
    lr = cfg.effective_lr
    groups = [dict(g, lr=float(g.get("lr", lr))) for g in groups]
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; valid: adam, adamw, sgd")
    if cfg.schedule == "constant":
        sched = None
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps))))
    else:
        raise ValueError(f"unknown schedule '{cfg.schedule}'; valid: constant, cosine")
    return opt, sched


def optimizer_step(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss: torch.Tensor,
                   params: list[torch.nn.Parameter], grad_clip: float | None, sched=None,
                   reduce_grads: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The loop's update: backward (scaled for fp16), ``reduce_grads`` (the loop's: average over
    ranks, stop on a non-finite loss), clipping, optimizer and scheduler step. Returns the
    (reduced) loss.
    """
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if reduce_grads is not None:
        loss = reduce_grads(loss)
    if grad_clip:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(opt)
    scaler.update()
    if sched is not None:
        sched.step()
    return loss


def non_finite_error(loss: float, where: str, cfg: MethodConfig) -> NonFiniteLossError:
    """The loop's error for a NaN or infinite (rank-averaged) loss: where it happened and what to do."""
    world = D.world_size()
    ranks = f" (mean over {world} ranks)" if world > 1 else ""
    return NonFiniteLossError(f"loss became {loss}{where}{ranks}; lower the learning rate "
                              f"(e.g. --opt lr={cfg.lr / 10:g}) or check the data")


def train_step(method: ContinualMethod, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, params: list[torch.nn.Parameter], cfg: MethodConfig,
               device: torch.device, sched=None, where: str = "", check: bool = True) -> dict[str, Any]:
    """One optimisation step of :meth:`~cl_peft_lib.loop.Runner.train_task`: ``observe`` under autocast, then
    :func:`optimizer_step`, whose gradient hook averages gradients and loss over ranks and (with
    ``check``) stops on a non-finite loss after backward, before the optimizer steps.

    The benchmark suite (``benchmarks/clbench``) times this function as the loop calls it
    (``clbench.micro.loop_step``).

    Args:
        where: appended to the error message, e.g. ``" at task 1, epoch 0, step 3"``.
        check: test the loss here (one host sync) and return floats; False leaves the test to the
            caller (:class:`LossWatch`) and returns the device tensors, so the step never waits for the GPU.

    Returns:
        ``{"loss": reduced loss, **logs of observe}``: floats with ``check``, else detached tensors.

    Raises:
        NonFiniteLossError: (``check`` only) the (reduced) loss is NaN or infinite; no parameter was updated.
    """
    with autocast(device):
        loss, logs = method.observe(x, y)

    def reduce_and_check(loss: torch.Tensor) -> torch.Tensor:
        loss = D.average_gradients(params, loss)  # identity in one process; all ranks see the same mean
        if check and not torch.isfinite(loss):
            raise non_finite_error(loss.item(), where, cfg)
        return loss

    loss = optimizer_step(opt, scaler, loss, params, cfg.grad_clip, sched, reduce_and_check)
    out = {"loss": loss.detach(), **logs}
    return {k: float(v) for k, v in out.items()} if check else out


#: environment variable: steps between two finite-loss checks of a task's training (default 50)
LOSS_CHECK_ENV = "CL_PEFT_LOSS_CHECK_EVERY"


def loss_check_every() -> int:
    """Steps between two finite-loss checks of a task's training, from ``$CL_PEFT_LOSS_CHECK_EVERY``
    (default 50; 1 checks after every step).

    Raises:
        ValueError: the variable is not a positive integer.
    """
    raw = os.environ.get(LOSS_CHECK_ENV, "50")
    try:
        every = int(raw)
    except ValueError:
        every = 0
    if every < 1:
        raise ValueError(f"{LOSS_CHECK_ENV}={raw!r} is not a positive integer; set it to e.g. 50 (or unset it)")
    return every


class LossWatch:
    """The losses of a task's recent steps, kept on the device and tested for NaN/inf together.

    Testing each step's loss (:func:`train_step` with ``check``) makes the host wait for the GPU
    once per step. :meth:`~cl_peft_lib.loop.Runner.train_task` instead adds every step's loss here and calls
    :meth:`check` every ``every`` steps and at the end of each epoch: one host sync per check, so
    the GPU never idles between steps. A non-finite loss then stops the run at the check, naming
    the first bad step. The parameters may have taken the updates of the steps after it, but the
    task is never recorded (no checkpoint, no accuracy row), so, as with a per-step check, the run
    ends with the finished tasks' results and resumes from their checkpoint.
    """

    def __init__(self, cfg: MethodConfig, every: int) -> None:
        self.cfg, self.every = cfg, every
        self._losses: list[torch.Tensor] = []
        self._where: list[str] = []

    def add(self, loss: torch.Tensor, where: str) -> bool:
        """Keep a step's (reduced, detached) loss; True when a check is due."""
        self._losses.append(loss.reshape(()))
        self._where.append(where)
        return len(self._losses) >= self.every

    def check(self) -> float | None:
        """Test the kept losses (one host sync) and forget them; the last one, or None when none is kept.

        Raises:
            NonFiniteLossError: one of them is NaN or infinite (the first bad step is named).
        """
        if not self._losses:
            return None
        vals = torch.stack(self._losses).float().cpu()
        where, self._losses, self._where = self._where, [], []
        bad = (~torch.isfinite(vals)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise non_finite_error(float(vals[i]), where[i], self.cfg)
        return float(vals[-1])
