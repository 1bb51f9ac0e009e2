"""LoRA methods: plain sequential LoRA, L2L (L2P with LoRA) and S-LoRA (S-Prompts with LoRA).

LoRA (Hu et al., 2022) leaves a pretrained linear layer ``W`` frozen and adds a
low-rank update, ``h = W x + (alpha / r) B A x`` with ``A`` (r x in) and ``B``
(out x r); ``B`` starts at zero, so a fresh adapter changes nothing. Wistuba et
al. (arXiv 2406.03216) swap the prompts of L2P and S-Prompts for LoRA and keep
everything else; here the swap is literal, because query, keys, selection,
surrogate loss, k-means and heads come from :mod:`.families` and only the PEFT
module differs:

* ``lora``: one HF peft adapter trained through the whole stream, one shared head.
* ``slora``: :class:`~.families.SXMethod` with one *named* peft adapter per domain;
  inference routes each sample to its adapter (peft's mixed-batch ``adapter_names``
  forward) or, per domain, through peft's merged weights.
* ``l2l``: :class:`~.families.L2XMethod` with a hand-written keyed pool of M LoRA
  modules (:class:`LoRAPool`): peft has no per-sample selection.

Targets are timm's ``blocks.{i}.attn.qkv`` (default), ``attn.proj``, ``mlp.fc1``,
``mlp.fc2``, and, for L2L only, ``qv``: the q and v output rows of the fused ``attn.qkv``
(the LoRA paper's and peft's ViT choice; ``r * (D + 2D)`` per block; peft cannot split timm's
fused layer, so plain LoRA and S-LoRA refuse it, and the default stays ``qkv`` for all three).
Trainable parameters per adapter: ``r * sum(in + out)`` over the targeted layers, e.g.
``depth * r * (D + 3D)`` for qkv (:func:`lora_numel`).

Default ranks. The ranks used by Wistuba et al. could not be checked offline, so
they are our choice: ``r=4`` for plain LoRA and S-LoRA (one adapter per sample),
``r=1`` for L2L (a sample sums N=5 rank-1 modules, so its update has rank <= 5,
about the same). Budgets: a LoRA layer costs ``r * (in + out)``, a prompt token
``D``. qkv LoRA at r=1 in all 12 blocks is ``48 D``, ten times an L2P prompt
(``L_p = 5`` tokens, ``5 D``); the matched comparison adapts block 0 only, where L2P
inserts its prompts: ``layers=(0,), rank=1`` gives ``4 D`` per module (0.8x).
:func:`matched_rank` gives the closest rank for any budget and number of blocks.

Only the PEFT module is swapped, the optimizer recipe of the rest is kept: L2L trains keys
and classifier exactly as L2P (Adam, ``lr`` 0.03 x batch/256) and gives the LoRA factors a
parameter group of their own (``lora_lr`` x batch/256); S-LoRA trains its heads as
S-Prompts (SGD ``lr`` 0.01) and its adapters at ``lora_lr`` (default the same 0.01).

Chapter: ``notebooks/04_lora.ipynb``.
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import ClassVar, Iterator, Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from ..backbones import REF_L2P
from ..options import check_range
from .registry import register_method
from .baselines import LinearHeadMethod
from .base import MethodConfig
from .families import L2XConfig, L2XMethod, SXConfig, SXMethod, scale_lr
from .selection import query_features

#: Where each LoRA target lives inside a timm ViT block.
TARGETS = {"qkv": "attn.qkv", "qv": "attn.qkv", "proj": "attn.proj", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
#: Targets that adapt only some output rows of their layer: ``qv`` = the query and value rows of timm's
#: fused ``attn.qkv`` (rows ``0..D-1`` and ``2D..3D-1``), the LoRA paper's choice for attention (Hu et al.,
#: 2022, Sec. 7.1: W_q and W_v) and peft's default for ViTs (``query``/``value``); only :class:`LoRAPool`
#: (L2L) supports it, peft's LoRA adapts whole layers.
ROW_TARGETS = {"qv"}


def target_rows(target: str, out_features: int) -> torch.Tensor | None:
    """Output rows a target adapts (None: all): for ``qv`` the q and v thirds of the fused qkv."""
    if target != "qv":
        return None
    D = out_features // 3
    return torch.cat([torch.arange(0, D), torch.arange(2 * D, 3 * D)])


def target_names(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise ``"qkv,proj"`` / ``["qkv"]`` to a tuple of valid target names."""
    names = tuple(t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets))
    bad = [t for t in names if t not in TARGETS]
    if bad or not names:
        raise ValueError(f"unknown LoRA target(s) {bad or names}; valid: {', '.join(TARGETS)}")
    if "qkv" in names and "qv" in names:
        raise ValueError("LoRA targets 'qkv' and 'qv' both adapt attn.qkv; choose one")
    return names


def target_regex(targets: str | Sequence[str], layers: Sequence[int] | None = None) -> str:
    """Regex over timm module names (``blocks.3.attn.qkv``) that peft matches with ``re.fullmatch``."""
    mods = "|".join(re.escape(TARGETS[t]) for t in target_names(targets))
    blocks = r"\d+" if layers is None else "|".join(str(int(i)) for i in layers)
    return rf"blocks\.({blocks})\.({mods})"


def lora_numel(embed_dim: int, depth: int, rank: int, targets: str | Sequence[str] = ("qkv",),
               mlp_ratio: float = 4.0) -> int:
    """Parameters of one LoRA adapter: ``depth * r * sum(in + out)`` over the targets of a block."""
    D, H = embed_dim, int(embed_dim * mlp_ratio)
    io = {"qkv": D + 3 * D, "qv": D + 2 * D, "proj": 2 * D, "fc1": D + H, "fc2": H + D}
    return depth * rank * sum(io[t] for t in target_names(targets))


def matched_rank(prompt_params: int, embed_dim: int, depth: int, targets: str | Sequence[str] = ("qkv",),
                 mlp_ratio: float = 4.0) -> int:
    """The rank r >= 1 whose adapter size :func:`lora_numel` is closest to ``prompt_params``.

    ``depth`` is the number of adapted blocks. If r=1 is still far above the budget,
    adapt fewer blocks (the configs' ``layers``).
    """
    return max(1, round(prompt_params / lora_numel(embed_dim, depth, 1, targets, mlp_ratio)))


@dataclass
class LoRAFields:
    """The LoRA module's own settings (mixed into each method's config).

    Attributes:
        rank: r.
        alpha: scale numerator, the update is ``alpha / r * B A x`` (None: alpha = r, scale 1).
        target_modules: targeted linear layers of each block: ``qkv``, ``proj``, ``fc1``, ``fc2``.
        layers: indices of the adapted blocks (None: all).
    """

    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] = ("qkv",)
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:  # accept CLI/JSON forms: "qkv,fc1", lists, a single block index
        self.target_modules = target_names(self.target_modules)
        if self.layers is not None:
            self.layers = (int(self.layers),) if isinstance(self.layers, int) else tuple(int(i) for i in self.layers)
        check_range(self, "rank", ge=1)
        check_range(self, "alpha", gt=0)
        bad = sorted(i for i in self.layers or () if i < 0)
        if bad or self.layers == ():
            raise ValueError(f"layers must be None (all blocks) or block indices >= 0, got {self.layers}")

    @property
    def scaling(self) -> float:
        """alpha / r."""
        return (self.alpha if self.alpha is not None else self.rank) / self.rank

    def peft_config(self) -> LoraConfig:
        """HF peft's ``LoraConfig`` (A kaiming-uniform, B zero) for a timm ViT.

        Raises:
            ValueError: a row target (``qv``), which peft cannot express on timm's fused qkv.
        """
        rows = sorted(ROW_TARGETS & set(self.target_modules))
        if rows:
            raise ValueError(f"LoRA target(s) {rows} adapt part of timm's fused attn.qkv, which peft cannot; "
                             f"only 'l2l' (LoRAPool) supports them; use 'qkv' here")
        return LoraConfig(r=self.rank, lora_alpha=self.scaling * self.rank,  # peft scales by lora_alpha / r
                          target_modules=target_regex(self.target_modules, self.layers))

    def adapter_numel(self, embed_dim: int, depth: int, mlp_ratio: float = 4.0) -> int:
        """Parameters of one adapter (one pool module) on a ViT of ``depth`` blocks."""
        return lora_numel(embed_dim, len(self.layers) if self.layers else depth, self.rank,
                          self.target_modules, mlp_ratio)


# ----------------------------------------------------------------------------- plain LoRA

@dataclass
class PlainLoRAConfig(MethodConfig, LoRAFields):
    """Sequential LoRA with L2P's recipe otherwise (Adam, linear batch scaling x batch/256, 5 epochs,
    masked logits), one learning rate for adapter and head.

    Attributes:
        lr: 0.0005 (x batch/256). L2P's 0.03 was measured about 25 points of average accuracy below
            0.0005 on the offline track (issue 14): one adapter trained through all tasks at that rate
            drifts far from the pretrained weights. Tune it on the validation split (``Task.val``).
    """

    lr: float = 0.0005
    lr_ref_batch: float | None = 256
    train_mask: bool = True


@register_method
class PlainLoRA(LinearHeadMethod):
    """One peft LoRA adapter and one linear head over all classes, trained task after task."""

    name = "lora"
    config_cls = PlainLoRAConfig
    #: L2L's backbone: plain LoRA is L2L without the pool (the paper profile compares them on one backbone).
    reference_backbone: ClassVar[str | None] = REF_L2P

    def __init__(self, backbone, kind, num_classes, num_tasks, config: PlainLoRAConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.backbone = get_peft_model(backbone, config.peft_config())  # LoRA in one line

    @classmethod
    def expected_trainable_params(cls, cfg: PlainLoRAConfig | None, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """Closed-form count ``depth * r * sum(in + out) + D * C + C`` (all three methods share this signature).

        Args:
            cfg: the method's config (None: its defaults).
            D: embedding dimension; C: classes; T: tasks (domains) seen; depth: blocks of the ViT.
        """
        cfg = cfg or cls.config_cls()
        return cfg.adapter_numel(D, depth) + D * C + C


# ----------------------------------------------------------------------------- S-LoRA

@dataclass
class SLoRAConfig(SXConfig, LoRAFields):
    """S-Prompts' settings (:class:`~.families.SXConfig`) with one LoRA adapter per domain.

    Inference through peft's merged weights (the samples grouped by predicted domain) instead of
    the mixed-batch ``adapter_names`` path is the ``merged_inference`` evaluation setting
    (:class:`~cl_peft_lib.evaluation.EvalConfig`): same predictions, other speed.

    Attributes:
        lora_lr: learning rate of the LoRA factors (their own parameter group, under the same batch
            rule as ``lr``; S-Prompts' has none); ``lr`` stays S-Prompts' rate for the heads. Default
            0.01, S-Prompts' rate for its prompts: no measurement argues for another one yet.
    """

    lora_lr: float = 0.01


@register_method
class SLoRA(SXMethod):
    """S-Prompts with LoRA: adapter ``task{t}`` and head t per domain, k-means routing."""

    name = "slora"
    config_cls = SLoRAConfig

    def param_groups(self) -> list[dict]:
        """Head at ``lr``, the current domain's adapter at ``lora_lr`` (both at the domain's weight decay)."""
        wd = self.weight_decay_now()
        lora = [p for n, p in self.named_parameters() if p.requires_grad and "lora_" in n]
        ids = {id(p) for p in lora}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        return [{"params": rest, "weight_decay": wd},
                {"params": lora, "lr": scale_lr(self.cfg, self.cfg.lora_lr), "weight_decay": wd}]

    def add_task_module(self, task_id: int) -> list[nn.Parameter]:
        name = f"task{task_id}"
        if isinstance(self.backbone, PeftModel):
            self.backbone.add_adapter(name, self.cfg.peft_config())
        else:
            self.backbone = get_peft_model(self.backbone, self.cfg.peft_config(), adapter_name=name)
        self.backbone.set_adapter(name)  # the active adapter: the one trained now
        return [p for n, p in self.backbone.named_parameters() if f".{name}." in n]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen ViT's feature: all adapters off (peft's ``disable_adapter``)."""
        if not isinstance(self.backbone, PeftModel):
            return query_features(self.backbone, x)
        with self.backbone.disable_adapter():
            return query_features(self.backbone, x)

    @contextmanager
    def merged(self, task_id: int) -> Iterator[None]:
        """peft's merge of adapter ``task{task_id}`` into the base weights, undone *bit-exactly* on exit.

        peft's unmerge subtracts the update again, which may leave rounding errors,
        so the base weights are also restored from a copy.
        """
        layers = [m for m in self.backbone.modules() if isinstance(m, LoraLayer)]
        saved = [m.get_base_layer().weight.detach().clone() for m in layers]
        with torch.autocast(saved[0].device.type, enabled=False):
            self.backbone.base_model.merge_adapter([f"task{task_id}"])
        try:
            yield
        finally:
            self.backbone.base_model.unmerge_adapter()
            for m, w in zip(layers, saved):
                m.get_base_layer().weight.data.copy_(w)

    def peft_features(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        if self.training:  # training domain t: adapter t is the active one
            return self.features(x)
        if self.eval_cfg.merged_inference:
            out = None
            for t in task_ids.unique().tolist():
                sel = (task_ids == t).nonzero().flatten()
                with self.merged(t):
                    f = self.features(x[sel])
                out = f.new_empty(len(x), f.shape[1]) if out is None else out
                out[sel] = f
            return out
        # peft's mixed batch: each LoRA layer runs each sample's own adapter (timm's forward
        # with num_classes=0 returns the pooled pre-logits features).
        return self.backbone(x, adapter_names=[f"task{t}" for t in task_ids.tolist()])

    @classmethod
    def expected_trainable_params(cls, cfg: SLoRAConfig | None, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """After T domains: ``T * depth * r * sum(in + out) + T * (D * C + C)`` (one head with ``shared_head``)."""
        cfg = cfg or cls.config_cls()
        heads = 1 if cfg.shared_head else T
        return T * cfg.adapter_numel(D, depth) + heads * (D * C + C)


# ----------------------------------------------------------------------------- L2L

class LoRAPool(nn.Module):
    """M LoRA modules on every targeted linear layer; sample b adds the sum of its selected ones.

    For the selection ``S(b)`` (indices ``idx``, shape ``(B, N)``) each hooked layer
    outputs ``W x_b + sum_{m in S(b)} (alpha / r) B_m A_m x_b``. The selected factors are
    gathered to ``(B, N, r, in)`` and ``(B, N, out, r)`` and contracted with two einsums:
    no per-sample weight matrix, no loop over samples. Written by hand because peft
    has no keyed pool with per-sample module selection.

    The pool hooks the backbone's ``nn.Linear`` modules (forward hooks); while no
    selection is set (``idx is None``) the hooks are the identity, i.e. the frozen ViT.

    Args:
        targets: ``{module name: nn.Linear}`` to adapt.
        pool_size: M.
        rank: r.
        scaling: alpha / r.
        rows: ``{module name: output rows}`` for layers adapted only in part (e.g. ``qv``: B has one row per
            adapted output, the update is added to those outputs only); other layers: all rows.
    """

    def __init__(self, targets: dict[str, nn.Linear], pool_size: int, rank: int, scaling: float,
                 rows: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.scaling = scaling
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        self.idx: torch.Tensor | None = None
        self.handles = []
        self.rows: dict[str, torch.Tensor] = {}
        for name, lin in targets.items():
            key = name.replace(".", "_")
            A = torch.empty(pool_size, rank, lin.in_features)
            for a in A:  # per module, as peft/loralib: fan_in = in
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            r = (rows or {}).get(name)
            if r is not None:
                self.rows[key] = r
                self.register_buffer(f"rows_{key}", r, persistent=False)
            self.A[key] = nn.Parameter(A)
            self.B[key] = nn.Parameter(torch.zeros(pool_size, lin.out_features if r is None else len(r), rank))
            self.handles.append(lin.register_forward_hook(partial(self._hook, key)))

    def delta(self, key: str, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``sum_{m in S(b)} scaling * B_m A_m x_b`` for x ``(B, T, in)``, idx ``(B, N)``."""
        A = self.A[key][idx].to(x.dtype)  # (B, N, r, in)
        B = self.B[key][idx].to(x.dtype)  # (B, N, out, r)
        h = torch.einsum("bti,bnri->btnr", x, A)
        return self.scaling * torch.einsum("btnr,bnor->bto", h, B)

    def _hook(self, key: str, module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
        if self.idx is None:
            return out
        d = self.delta(key, inputs[0], self.idx).to(out.dtype)
        if key in self.rows:  # only these outputs (e.g. q and v of the fused qkv)
            return out.index_add(out.dim() - 1, getattr(self, f"rows_{key}"), d)
        return out + d

    def remove(self) -> None:
        """Detach the hooks from the backbone."""
        for h in self.handles:
            h.remove()


@dataclass
class L2LConfig(L2XConfig, LoRAFields):
    """L2P's settings (:class:`~.families.L2XConfig`: M=10, N=5, lambda=0.1, batch-wise, Adam
    x batch/256, 5 epochs) with LoRA modules instead of prompts; rank 1 (see module docstring).

    Attributes:
        lr: L2P's Adam rate for keys and classifier, 0.03 at batch 256 (l2p-pytorch
            ``configs/cifar100_l2p.py`` ``--lr``, scaled with the batch): only the PEFT module is swapped.
        lora_lr: Adam rate of the LoRA factors at batch 256 (their own parameter group, the same
            batch scaling), 10x below L2P's 0.03. At L2P's rate the summed LoRA updates grow until the
            ViT's features collapse: on the offline track (``offline-cil``, batch 128) L2L ended at
            3.4 / 6.1 / 3.4% average accuracy (seeds 0-2). A sweep on the same track (seeds 0 and 1,
            test accuracy, with one rate for factors, keys and head) gave 0.01 -> 45.7, 0.003 ->
            56.5 +/- 1.6, 0.001 -> 56.9 +/- 6.4, 0.0003 -> 55.3; 0.003 is the steadiest. That sweep
            trained keys and head at the same rate; with them back at 0.03, re-tune ``lora_lr`` on
            the validation split (chapter 6).
    """

    rank: int = 1
    lr: float = 0.03
    lora_lr: float = 0.003


@register_method
class L2L(L2XMethod):
    """L2P with LoRA: a keyed pool of M LoRA modules, top-N per sample summed, one shared head."""

    name = "l2l"
    config_cls = L2LConfig

    def __init__(self, backbone, kind, num_classes, num_tasks, config: L2LConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        rx = target_regex(config.target_modules, config.layers)
        targets = {n: m for n, m in backbone.named_modules() if re.fullmatch(rx, n) and isinstance(m, nn.Linear)}
        if not targets:
            raise ValueError(f"no nn.Linear of the backbone matches {rx}")
        rows = {}
        if "qv" in config.target_modules:  # the fused qkv layers, adapted in their q and v rows only
            rows = {n: target_rows("qv", m.out_features) for n, m in targets.items() if n.endswith(TARGETS["qv"])}
        self.loras = LoRAPool(targets, config.pool_size, config.rank, config.scaling, rows)

    def param_groups(self) -> list[dict]:
        """Keys and classifier at ``lr`` (L2P's recipe), the pool's LoRA factors at ``lora_lr``, both x batch/256."""
        lora = [p for p in self.loras.parameters() if p.requires_grad]
        ids = {id(p) for p in lora}
        rest = [p for p in self.trainable_parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": lora, "lr": scale_lr(self.cfg, self.cfg.lora_lr)}]

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """q(x) with the pool's hooks off: the frozen ViT's [CLS] feature."""
        self.loras.idx = None
        return query_features(self.backbone, x)

    def peft_features(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        self.loras.idx = idx
        try:
            return self.features(x)
        finally:
            self.loras.idx = None

    @classmethod
    def expected_trainable_params(cls, cfg: L2LConfig | None, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """``M * D`` (keys) ``+ M * depth * r * sum(in + out) + D * C + C``."""
        cfg = cfg or cls.config_cls()
        return cfg.pool_size * (D + cfg.adapter_numel(D, depth)) + D * C + C
