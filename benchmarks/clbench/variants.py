"""The measured variants of a method: fused optimizer, regional ``torch.compile``, merged LoRA weights.

Chapter: ``notebooks/07_efficiency.ipynb`` (the ``fused``/``compiled`` rows and merged inference).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from cl_peft_lib import compiling
from cl_peft_lib.compiling import dynamo_stats  # noqa: F401 - the suite's name for it


def fused_like(opt: torch.optim.Optimizer, sched):
    """The same optimizer (class, groups, hyper-parameters) with ``fused=True``; its scheduler rebuilt."""
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach", "initial_lr")} for g in opt.param_groups]
    new = type(opt)(groups, fused=True)
    new_sched = None
    if sched is not None:
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            raise TypeError(f"cannot rebuild scheduler {type(sched).__name__} for the fused optimizer")
        new_sched = torch.optim.lr_scheduler.LambdaLR(new, sched.lr_lambdas)
    return new, new_sched


def compile_blocks(model: nn.Module) -> int:
    """The loop's regional compilation (:func:`cl_peft_lib.compiling.compile_blocks`) with static shapes (the
    benchmark's fixed batches) and no eager fallback (a failure to compile is recorded, not hidden); returns how
    many blocks."""
    return compiling.compile_blocks(model, dynamic=False, fallback=False)


def merged_variant(m: nn.Module):
    """A context in which ``predict`` uses merged LoRA weights, or None when the method has no such mode.

    S-LoRA scores under the ``merged_inference`` evaluation setting; a method whose backbone is
    a peft model (plain LoRA) merges its adapter with peft's ``merge_adapter``.
    """
    from cl_peft_lib.evaluation import EvalConfig
    from cl_peft_lib.methods.lora import SLoRA

    if isinstance(m, SLoRA):
        @contextmanager
        def ctx():
            old = m.eval_cfg
            m.set_eval(EvalConfig(merged_inference=True))
            try:
                yield
            finally:
                m.set_eval(old)
        return ctx()
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return None
    bb = getattr(m, "backbone", None)
    if isinstance(bb, PeftModel):
        return peft_merged(bb)
    return None


@contextmanager
def peft_merged(model):
    """Merge a peft model's adapter into its weights (outside autocast) for the block; unmerge after."""
    with torch.autocast(next(model.parameters()).device.type, enabled=False):
        model.base_model.merge_adapter()
    try:
        yield
    finally:
        model.base_model.unmerge_adapter()
