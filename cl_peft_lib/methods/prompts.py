"""Prompt-tuning methods on a frozen timm ViT: L2P, S-Prompts and DualPrompt.

These are the methods the paper starts from; the LoRA chapter swaps their PEFT module
and keeps everything else. They hook timm's *public* pieces of the same frozen
backbone (``patch_embed``, ``_pos_embed``, ``norm_pre``, ``blocks``, each block's
``attn``, ``norm``, ``forward_head``); no ViT file is copied.

* :class:`L2P` (Wang et al., CVPR 2022): :class:`~.families.L2XMethod` whose pool holds
  M prompts of Lp tokens; the top-N prompts of each sample are inserted after [CLS] at
  the input; the head reads the mean of the prompt tokens' outputs.
* :class:`SPrompts` (Wang, Huang, Hong, NeurIPS 2022; its ViT variant S-iPrompts):
  :class:`~.families.SXMethod` whose per-domain module is one prompt of Lp tokens
  inserted after [CLS]; the domain's head reads [CLS].
* :class:`DualPrompt` (Wang et al., ECCV 2022): a G-prompt shared by all tasks and a keyed
  pool of E-prompts, both as prefix tuning (learned keys and values prepended inside
  attention) of given blocks; the head reads [CLS].

Reference code read for the defaults: l2p-pytorch and dualprompt-pytorch (JH-LEE-KR, the
PyTorch ports), google-research/l2p (the JAX original of both) and iamwangyabin/S-Prompts.

Chapter: ``notebooks/03_prompt_tuning.ipynb``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ..options import check_range
from .registry import register_method
from .families import L2XConfig, L2XMethod, SXConfig, SXMethod
from .selection import count_ids


# ----------------------------------------------------------------------------- hooks into timm's ViT
def embed_tokens(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block, as timm's ``forward_features`` builds them:
    patch embedding, [CLS] and position embedding (``_pos_embed``), ``patch_drop``, ``norm_pre``."""
    return vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))


def insert_prompts(vit: nn.Module, tokens: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Place prompt tokens ``(B, P, D)`` right after the prefix token(s) ([CLS]), without position embedding."""
    n = vit.num_prefix_tokens
    return torch.cat([tokens[:, :n], prompts.to(tokens.dtype), tokens[:, n:]], dim=1)


def prefix_attention(attn: nn.Module, x: torch.Tensor, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """timm ``Attention.forward`` with learned prefix keys and values (prefix tuning).

    Args:
        attn: a timm ``Attention``; its ``qkv``, ``q_norm``/``k_norm``, ``norm``, ``proj`` are used unchanged.
        x: the block's normalised tokens ``(B, N, D)``.
        prefix: ``(B, 2, L, D)``: key prefix ``[:, 0]`` and value prefix ``[:, 1]``, split into heads
            like the keys and values, prepended to them (as dualprompt-pytorch ``PreT_Attention``);
            None runs plain attention.

    Returns:
        ``(B, N, D)``: only the N token queries attend, so the sequence length is unchanged.
    """
    B, N, _ = x.shape
    H, dh = attn.num_heads, attn.head_dim
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, dh).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if prefix is not None:
        pk, pv = prefix.to(k.dtype).reshape(B, 2, -1, H, dh).permute(1, 0, 3, 2, 4).unbind(0)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0,
                                         scale=attn.scale)
    out = attn.norm(out.transpose(1, 2).reshape(B, N, H * dh))
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(x).sigmoid()
    return attn.proj_drop(attn.proj(out))


def prefix_block(blk: Block, x: torch.Tensor, prefix: torch.Tensor | None) -> torch.Tensor:
    """timm ``Block.forward`` (pre-norm residual attention, then MLP) with :func:`prefix_attention`."""
    x = x + blk.drop_path1(blk.ls1(prefix_attention(blk.attn, blk.norm1(x), prefix)))
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


# ----------------------------------------------------------------------------- L2P
@dataclass
class L2PConfig(L2XConfig):
    """L2P on Split CIFAR-100: l2p-pytorch ``configs/cifar100_l2p.py`` (the values of the paper).

    Inherited from :class:`~.families.L2XConfig`: M=10 (``--size``), N=5 (``--top_k``),
    lambda=0.1 (``--pull_constraint_coeff``), batch-wise selection (``--batchwise_prompt``),
    Adam lr 0.03 x batch/256 (``--lr``, ``--unscale_lr``), batch 16, 5 epochs, constant
    schedule, gradient clipping 1.0, masked logits (``--train_mask``). The reference's
    ``--use_prompt_mask`` is False for CIFAR, so L2P always lets the keys choose.

    Attributes:
        prompt_length: Lp, tokens per prompt (``--length 5``).
        prompt_init: prompts start uniform in ``[low, high)``: (-1, 1) as the prompt-pool branch of
            l2p-pytorch ``prompt.py`` (``nn.init.uniform_(self.prompt, -1, 1)`` since commit 173a6af "modify
            init.uniform bound", unchanged at 3c958ec), the branch L2P runs (``--prompt_pool``); its
            non-pool branch keeps ``nn.init.uniform_`` = [0, 1), the JAX original (google-research/l2p)
            flax's ``uniform()`` = [0, 0.01). Both stay available as values of this option.
    """

    prompt_length: int = 5
    prompt_init: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "prompt_length", ge=1)
        if not self.prompt_init[0] < self.prompt_init[1]:
            raise ValueError(f"prompt_init must be (low, high) with low < high, got {self.prompt_init}")


@register_method
class L2P(L2XMethod):
    """Learning to Prompt: a pool of M prompts with keys; each sample uses its top-N prompts.

    The query is the frozen, prompt-free [CLS] feature; the N selected prompts (N*Lp tokens)
    are inserted after [CLS] at the input, with no position embedding (JAX original; the
    PyTorch port adds [CLS]'s position embedding to them, which only shifts their
    initialisation). The classifier reads the mean of the prompt tokens' outputs after the
    final norm (reference ``head_type='prompt'``). Batch-wise selection applies in training
    only (:class:`~.selection.KeyedPool`); the reference codes also apply it at test time,
    where it makes a sample's prediction depend on the rest of its batch.

    Trainable parameters: ``M*Lp*D`` (prompts) ``+ M*D`` (keys) ``+ D*C + C`` (head).
    """

    name = "l2p"
    config_cls = L2PConfig

    def __init__(self, backbone, kind, num_classes, num_tasks, config: L2PConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        M, Lp, (lo, hi) = config.pool_size, config.prompt_length, config.prompt_init
        self.prompts = nn.Parameter(torch.empty(M, Lp, self.embed_dim).uniform_(lo, hi))

    @classmethod
    def expected_trainable_params(cls, cfg: L2PConfig, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """The closed form of :meth:`num_trainable` (independent of the number of tasks T)."""
        M, Lp = cfg.pool_size, cfg.prompt_length
        return M * Lp * D + M * D + D * C + C

    def peft_features(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        p = self.prompts[idx].flatten(1, 2)  # (B, N*Lp, D): one gather, no loop over the batch
        t = vit.norm(vit.blocks(insert_prompts(vit, embed_tokens(vit, x), p)))
        n = vit.num_prefix_tokens
        return vit.head_drop(vit.fc_norm(t[:, n:n + p.shape[1]].mean(dim=1)))


# ----------------------------------------------------------------------------- S-Prompts
@dataclass
class SPromptsConfig(SXConfig):
    """S-iPrompts (the ViT variant): S-Prompts reference ``models/sinet.py``, ``methods/sprompt.py``, configs.

    Inherited from :class:`~.families.SXConfig`: k-means k=5 on frozen L2-normalised [CLS]
    features per domain, SGD lr 0.01 momentum 0.9, cosine schedule, 10 epochs, batch 128,
    weight decay 2e-4 (``weight_decay``; the reference uses 5e-4 on the first domain only).

    Attributes:
        prompt_length: Lp, tokens of each domain's prompt (``"prompt_length": 10``).
    """

    prompt_length: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "prompt_length", ge=1)


@register_method
class SPrompts(SXMethod):
    """S-Prompts: one prompt and one classifier per domain, the domain found by k-means at test time.

    Domain t's prompt (Lp tokens) is inserted after [CLS] at the input, after the position
    embedding (reference ``ViT_Prompts.forward``); its head reads the [CLS] output
    (reference ``global_pool='token'``). Prompts start like the reference's
    ``nn.Linear(D, Lp).weight``: uniform in ``[-1/sqrt(D), 1/sqrt(D)]``.

    Trainable parameters after T domains: ``T*Lp*D`` (prompts) ``+ T*(D*C + C)`` (heads; ``D*C + C``
    with the ``shared_head`` ablation).
    """

    name = "sprompts"
    config_cls = SPromptsConfig

    def __init__(self, backbone, kind, num_classes, num_tasks, config: SPromptsConfig) -> None:
        if kind != "domain":
            raise ValueError(f"method 'sprompts' needs a domain-incremental scenario (one prompt and one head per "
                             f"domain, the domain found by k-means), got a {kind}-incremental one; "
                             f"use 'l2p' or 'dualprompt' for class-incremental benchmarks")
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        self.prompts = nn.ParameterList()

    @classmethod
    def expected_trainable_params(cls, cfg: SPromptsConfig, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """The closed form of :meth:`num_trainable` after T domains (one head in all with ``shared_head``)."""
        heads = 1 if getattr(cfg, "shared_head", False) else T
        return T * cfg.prompt_length * D + heads * (D * C + C)

    def add_task_module(self, task_id: int) -> list[nn.Parameter]:
        D, Lp = self.embed_dim, self.cfg.prompt_length
        p = nn.Parameter(torch.empty(Lp, D, device=self.seen.device).uniform_(-D ** -0.5, D ** -0.5))
        self.prompts.append(p)
        return [p]

    def peft_features(self, x: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        vit = self.backbone
        p = torch.stack(list(self.prompts))[task_ids]  # (B, Lp, D): one gather
        t = vit.norm(vit.blocks(insert_prompts(vit, embed_tokens(vit, x), p)))
        return vit.forward_head(t, pre_logits=True)


# ----------------------------------------------------------------------------- DualPrompt
@dataclass
class DualPromptConfig(L2PConfig):
    """DualPrompt on Split CIFAR-100: dualprompt-pytorch ``configs/cifar100_dualprompt.py``
    (the same values as google-research/l2p ``configs/cifar100_dualprompt.py``).

    Overridden L2P fields: E-pool M=10 (``--size``), N=1 (``--top_k``), Le=5 (``--length``),
    lambda=1.0 (``--pull_constraint_coeff``), batch 24 (``--batch-size``), prompts and keys
    start uniform in [-1, 1] (``nn.init.uniform_(p, -1, 1)``). Unchanged: Adam lr 0.03 x
    batch/256, 5 epochs, constant schedule, clipping 1.0, masked logits, batch-wise selection.

    Attributes:
        g_length: Lg, G-prompt length (``--g_prompt_length 5``).
        g_layers: blocks whose attention gets the G-prompt (``--g_prompt_layer_idx 0 1``).
        e_layers: blocks whose attention gets the E-prompt (``--e_prompt_layer_idx 2 3 4``).
        use_prompt_mask: during training, task t uses E-prompts ``t*N .. t*N+N-1`` (and pulls their
            keys) instead of the query's choice, while they exist in the pool (``--use_prompt_mask``).
        shared_prompt_pool: at the start of task t, its E-prompts are copied from task t-1's
            (``--shared_prompt_pool``).
    """

    top_n: int = 1
    surrogate_weight: float = 1.0
    batch_size: int = 24
    prompt_length: int = 5
    prompt_init: tuple[float, float] = (-1.0, 1.0)
    g_length: int = 5
    g_layers: tuple[int, ...] = (0, 1)
    e_layers: tuple[int, ...] = (2, 3, 4)
    use_prompt_mask: bool = True
    shared_prompt_pool: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "g_length", ge=1)
        bad = sorted(i for i in (*self.g_layers, *self.e_layers) if i < 0)
        if bad:
            raise ValueError(f"g_layers/e_layers must be block indices >= 0, got {bad}")


@register_method
class DualPrompt(L2XMethod):
    """DualPrompt: a shared G-prompt (blocks ``g_layers``) and keyed E-prompts (blocks ``e_layers``).

    Both are prefix tuning: at a prompted block, a prompt of length L contributes L learned
    keys *and* L learned values per head (reference layout ``(2, L, heads, D/heads)``; the
    paper's text splits one length-L prompt into halves instead). A block in both lists gets
    the G-prefix then the E-prefix. The query is the frozen [CLS] feature; the head reads
    the [CLS] output (reference ``head_type='token'``).

    Trainable parameters: ``2*Lg*D*|G|`` (G-prompt) ``+ 2*Le*D*|E|*M`` (E-pool)
    ``+ M*D`` (keys) ``+ D*C + C`` (head).
    """

    name = "dualprompt"
    config_cls = DualPromptConfig

    def __init__(self, backbone, kind, num_classes, num_tasks, config: DualPromptConfig) -> None:
        super().__init__(backbone, kind, num_classes, num_tasks, config)
        depth = len(backbone.blocks)
        bad = sorted(i for i in (*config.g_layers, *config.e_layers) if not 0 <= i < depth)
        if bad:
            raise ValueError(f"dualprompt: prompt layers {bad} do not exist in this {depth}-block backbone; "
                             f"choose g_layers/e_layers in 0..{depth - 1} (e.g. g_layers=[0], e_layers=[1])")
        if not all(type(b) is Block for b in backbone.blocks):
            raise TypeError("dualprompt hooks timm's standard ViT Block; this backbone uses another block type")
        lo, hi, D = *config.prompt_init, self.embed_dim
        self.g_prompts = nn.Parameter(torch.empty(len(config.g_layers), 2, config.g_length, D).uniform_(lo, hi))
        self.e_prompts = nn.Parameter(
            torch.empty(config.pool_size, len(config.e_layers), 2, config.prompt_length, D).uniform_(lo, hi))

    @classmethod
    def expected_trainable_params(cls, cfg: DualPromptConfig, D: int, C: int, T: int = 1, depth: int = 12) -> int:
        """The closed form of :meth:`num_trainable` (independent of the number of tasks T)."""
        M = cfg.pool_size
        return (2 * cfg.g_length * D * len(cfg.g_layers) + 2 * cfg.prompt_length * D * len(cfg.e_layers) * M
                + M * D + D * C + C)

    def _mask_idx(self, batch: int, device: torch.device) -> torch.Tensor | None:
        """The current task's E-prompt ids ``(B, N)`` under the training prompt mask, else None."""
        N, t = self.cfg.top_n, self.task_id
        if not (self.training and self.cfg.use_prompt_mask and 0 <= t and (t + 1) * N <= self.cfg.pool_size):
            return None
        return torch.arange(t * N, (t + 1) * N, device=device).expand(batch, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._mask_idx(len(x), x.device)
        if idx is None:
            return super().forward(x)
        sim = self.pool.similarity(self.query(x))
        self.pool.counts += count_ids(idx, self.cfg.pool_size)
        self._match = (sim, idx)  # the surrogate pulls the current task's keys, as in the reference
        return self.head(self.peft_features(x, idx))

    def begin_task(self, task_id: int, classes: list[int]) -> None:
        super().begin_task(task_id, classes)
        N = self.cfg.top_n
        if self.cfg.shared_prompt_pool and task_id > 0 and (task_id + 1) * N <= self.cfg.pool_size:
            with torch.no_grad():
                self.e_prompts[task_id * N:(task_id + 1) * N] = self.e_prompts[(task_id - 1) * N:task_id * N]

    def peft_features(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        vit, g_layers, e_layers = self.backbone, list(self.cfg.g_layers), list(self.cfg.e_layers)
        B = len(x)
        e = self.e_prompts[idx].permute(2, 0, 3, 1, 4, 5).flatten(3, 4)  # gather -> (|E|, B, 2, N*Le, D)
        t = embed_tokens(vit, x)
        for i, blk in enumerate(vit.blocks):
            parts = []
            if i in g_layers:
                parts.append(self.g_prompts[g_layers.index(i)].expand(B, -1, -1, -1))
            if i in e_layers:
                parts.append(e[e_layers.index(i)])
            t = prefix_block(blk, t, torch.cat(parts, dim=2)) if parts else blk(t)
        return vit.forward_head(vit.norm(t), pre_logits=True)
