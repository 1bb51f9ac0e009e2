"""The measured variants of a method: fused optimizer, regional ``torch.compile``, merged LoRA weights.

Chapter: ``notebooks/07_efficiency.ipynb`` (the ``fused``/``compiled`` rows and merged inference).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


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
    """Regional compilation: ``torch.compile`` every timm ViT ``Block`` in place; returns how many.

    Generic across methods: prompt methods call ``vit.blocks`` (each block compiled), peft and
    L2L's hooks live inside the blocks. DualPrompt's prefix-tuned blocks call the block's
    sub-modules directly and so stay eager.
    """
    from timm.models.vision_transformer import Block

    import torch._dynamo

    torch._dynamo.reset()
    try:
        from torch._dynamo.utils import counters
        counters.clear()
    except ImportError:  # pragma: no cover
        pass
    cfg = torch._dynamo.config
    for k in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, k):
            setattr(cfg, k, max(64, getattr(cfg, k)))
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.compile(dynamic=False)  # static shapes: the query pass and the prompted pass get their own kernels
    return len(blocks)


def dynamo_stats() -> dict:
    """Graph breaks and compiled graphs since the last :func:`compile_blocks` (did compilation cover the model?)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {"graph_breaks": int(sum(counters["graph_break"].values())),
            "graph_break_reasons": sorted(counters["graph_break"])[:5],
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}


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
