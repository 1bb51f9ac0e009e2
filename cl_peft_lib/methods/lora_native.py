"""What the hand-written LoRA methods on timm's fused ``attn.qkv`` share (InfLoRA, SD-LoRA).

Both adapt some output rows of every chosen block's fused qkv layer through forward hooks (peft
cannot split the fused layer): InfLoRA the key and value rows, SD-LoRA the query and value rows.
Here are their common settings (:class:`QKVLoRAFields`) and the lookup of the layers
(:func:`fused_qkv_layers`); each method's own module holds the rest.

Chapter: ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from ..options import check_range
from .lora import target_regex


@dataclass
class QKVLoRAFields:
    """Rank and placement of a per-task LoRA on the fused qkv (mixed into each method's config).

    Attributes:
        rank: r of every task's factors (both official codes: 10).
        layers: indices of the adapted blocks (None: all, as both official codes).
    """

    rank: int = 10
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.layers is not None:
            self.layers = (int(self.layers),) if isinstance(self.layers, int) else tuple(int(i) for i in self.layers)
        check_range(self, "rank", ge=1)
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError(f"layers must be None (all blocks) or block indices >= 0, got {self.layers}")

    def blocks(self, depth: int) -> int:
        """Adapted blocks of a ViT of ``depth`` blocks."""
        return len(self.layers) if self.layers else depth


def fused_qkv_layers(backbone: nn.Module, layers: tuple[int, ...] | None) -> dict[str, nn.Linear]:
    """``{"blocks_3_attn_qkv": nn.Linear, ...}``: the fused qkv layers of the chosen blocks (``ValueError``: none)."""
    rx = target_regex("qkv", layers)
    found = {n.replace(".", "_"): m for n, m in backbone.named_modules()
             if re.fullmatch(rx, n) and isinstance(m, nn.Linear)}
    if not found:
        raise ValueError(f"no attn.qkv of the backbone matches {rx}")
    return found
