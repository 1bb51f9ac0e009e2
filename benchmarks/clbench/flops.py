"""FLOP counting: ``FlopCounterMode`` with the CPU SDPA formulas, the analytic ViT count, ViT passes.

Chapter: ``notebooks/07_efficiency.ipynb`` (GFLOP per image and MFU).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def vit_forward_flops(vit: nn.Module, num_classes: int = 0) -> int:
    """Analytic forward FLOPs (2 per multiply-add) of one image through a timm ``VisionTransformer``.

    Patch embedding, per block qkv, QK^T, AV, proj, fc1, fc2, plus a linear head of
    ``num_classes``; norms, softmax, GELU and additions are not counted (as FlopCounterMode).
    """
    pe = vit.patch_embed
    n_patch = int(pe.num_patches)
    w = pe.proj.weight  # (D, C_in, P, P)
    D = w.shape[0]
    N = n_patch + int(getattr(vit, "num_prefix_tokens", 1))
    total = patch_embed_flops(vit)
    for blk in vit.blocks:
        q = blk.attn.qkv
        hidden = blk.mlp.fc1.out_features
        total += 2 * N * D * q.out_features + 2 * 2 * N * N * D + 2 * N * D * D + 2 * 2 * N * D * hidden
    return total + 2 * D * num_classes


def patch_embed_flops(vit: nn.Module) -> int:
    """Forward FLOPs of the patch embedding for one image: it runs once per ViT pass."""
    pe = vit.patch_embed
    w = pe.proj.weight
    return 2 * int(pe.num_patches) * w[0].numel() * w.shape[0]


def vit_passes(by_op: dict[str, int], vit: nn.Module, batch: int) -> float:
    """How many ViT forward passes a FLOP count contains (its patch-embedding FLOPs / one pass's):
    1 for a single pass, 2 for a query pass plus an adapted pass. More than expected is wasted work."""
    return round(by_op.get("convolution", 0) / (patch_embed_flops(vit) * batch), 3)


def _extra_flop_formulas() -> dict:
    """Formulas FlopCounterMode lacks in some builds: the CPU flash-attention kernels of SDPA."""
    try:
        from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count
    except ImportError:  # pragma: no cover - other torch versions: count without the extras
        return {}
    aten = torch.ops.aten
    extra = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None and fwd not in flop_registry:
        extra[fwd] = lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)
    if bwd is not None and bwd not in flop_registry:
        extra[bwd] = lambda go, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(go, q, k, v)
    return extra


@contextmanager
def flop_counter():
    """``FlopCounterMode`` (no table) with the extra formulas; yields the mode."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as fc:
        yield fc


def flop_summary(fc) -> tuple[int, dict[str, int]]:
    """Total FLOPs of a finished :func:`flop_counter` and its count per aten op (``aten.`` dropped)."""
    counts = fc.get_flop_counts().get("Global", {})
    return int(fc.get_total_flops()), {str(k).replace("aten.", ""): int(v) for k, v in counts.items()}
