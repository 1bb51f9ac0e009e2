"""Backbones: timm Vision Transformers by name.

The registry maps a short name to a timm model name, its constructor arguments
and where its weights come from: timm's own pretrained tag (paper track, needs
internet the first time) or a local file loaded through timm's
``pretrained_cfg_overlay=dict(file=...)`` path (offline track). The backbone is
always created with ``num_classes=0``: methods own their heads.

The paper track uses each method's *reference* backbone (``reference_backbone`` of the
method class, chosen by :meth:`cl_peft_lib.profiles.Profile.backbone_for`): the original
ImageNet-21k ViT-B/16 (:data:`REF_L2P`) for L2P, DualPrompt and L2L, the in21k model
fine-tuned on in1k (:data:`REF_SPROMPTS`) for S-Prompts and S-LoRA; ``augreg_in21k`` stays
registered as an option and as the default of the other methods.

Input normalisation: we always normalise with the backbone's own mean/std (0.5/0.5 for these
three timm tags, i.e. inputs in [-1, 1], the range the weights were trained on). The
references differ: l2p-pytorch/dualprompt-pytorch feed unnormalised [0, 1] inputs
(``datasets.py`` ``build_transform`` ends with ``ToTensor()``), S-Prompts normalises with the
ImageNet mean/std (``utils/data.py``). We keep the backbone's normalisation (documented deviation).

Chapter: ``notebooks/02_pretrained_backbone.ipynb``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
from torch import nn

WEIGHTS_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone.

    Attributes:
        timm_name: timm architecture (and tag) passed to ``timm.create_model``.
        kwargs: extra constructor arguments (e.g. ``img_size``, ``patch_size``, ``depth``).
        file: weights file name inside ``cl_peft_lib/weights`` (offline track), or None.
        pretrained: load weights at all (False gives a randomly initialised model).
        tag: provenance tag printed with every result.
        mean: input normalisation mean (overrides timm's when set).
        std: input normalisation std (overrides timm's when set).
    """

    timm_name: str
    kwargs: dict = field(default_factory=dict)
    file: str | None = None
    pretrained: bool = True
    tag: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


#: The backbone behind L2P's and DualPrompt's published numbers (timm tag).
REF_L2P = "vit_base_patch16_224.orig_in21k"
#: The backbone behind S-Prompts' published numbers (timm tag).
REF_SPROMPTS = "vit_base_patch16_224.augreg_in21k_ft_in1k"

_OFFLINE_SHAPE = dict(img_size=28, patch_size=4, embed_dim=192, depth=12, num_heads=3)

BACKBONES: dict[str, BackboneSpec] = {
    # Paper track: ViT-B/16 pretrained on ImageNet-21k (AugReg weights, Steiner et al. 2021): the
    # paper profile's backbone for methods without a reference backbone of their own.
    "vit_base_patch16_224.augreg_in21k": BackboneSpec(
        "vit_base_patch16_224.augreg_in21k", tag="timm:vit_base_patch16_224.augreg_in21k"),
    # L2P, DualPrompt (and L2L): the original ImageNet-21k ViT-B/16 of Dosovitskiy et al.; l2p-pytorch
    # vision_transformer.py (commit 68aaa4c) maps 'vit_base_patch16_224' to .../imagenet21k/ViT-B_16.npz.
    REF_L2P: BackboneSpec(REF_L2P, tag=f"timm:{REF_L2P}"),
    # S-Prompts (and S-LoRA): models/sinet.py (commit a26e822) builds timm's plain 'vit_base_patch16_224'
    # with pretrained=True, which in the timm of 2022 was the AugReg in21k model fine-tuned on in1k.
    REF_SPROMPTS: BackboneSpec(REF_SPROMPTS, tag=f"timm:{REF_SPROMPTS}"),
    # Offline track: a ViT-Tiny-shaped student distilled by this project (scripts/distill_offline_vit.py).
    # 28 px (the offline images' native size: no resampling), patch 4 -> a 7x7 grid, depth 12 like ViT-B.
    "offline_vit_tiny_p4_28": BackboneSpec(
        "vit_tiny_patch16_224", dict(_OFFLINE_SHAPE), file="offline_vit_tiny_p4_28.safetensors",
        tag="cl-peft:offline_vit_tiny_p4_28", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # The same shape, randomly initialised: the floor the distilled weights must beat.
    "random_vit_tiny_p4_28": BackboneSpec(
        "vit_tiny_patch16_224", dict(_OFFLINE_SHAPE), pretrained=False,
        tag="random:vit_tiny_p4_28", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
    # The paper track's ViT-B/16, randomly initialised: speed and memory checks of the paper pipeline on a machine
    # that cannot download the reference weights (scripts/colab_check.py, scripts/compile_check.py).
    "random_vit_base_patch16_224": BackboneSpec(
        "vit_base_patch16_224", pretrained=False, tag="random:vit_base_patch16_224"),
    # A micro ViT for unit tests (random weights; seconds on a CPU).
    "test_vit_micro": BackboneSpec(
        "vit_tiny_patch16_224", dict(img_size=16, patch_size=4, embed_dim=48, depth=2, num_heads=2),
        pretrained=False, tag="random:test_vit_micro", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def _unknown(name: str) -> KeyError:
    return KeyError(f"unknown backbone '{name}'; valid: {', '.join(sorted(BACKBONES))}")


def backbone_spec(name: str) -> BackboneSpec:
    """The registered :class:`BackboneSpec` of ``name`` (clear error listing valid names)."""
    if name not in BACKBONES:
        raise _unknown(name)
    return BACKBONES[name]


def weights_path(name: str) -> Path | None:
    """Local weights file of backbone ``name`` (None for timm-tag or random backbones)."""
    spec = backbone_spec(name)
    return WEIGHTS_DIR / spec.file if spec.file else None


def create_backbone(name: str, pretrained: bool | None = None) -> nn.Module:
    """Build backbone ``name`` as a timm ``VisionTransformer`` with ``num_classes=0``.

    Args:
        name: a key of :data:`BACKBONES`.
        pretrained: override the spec's ``pretrained`` (False gives random weights).

    A randomly initialised backbone (``pretrained=False``) is always the same draw (seed 0),
    so runs, ranks and tests that build one agree bit for bit.

    Returns:
        The model in eval mode, with attributes ``cl_tag`` (provenance tag),
        ``cl_mean``/``cl_std`` (input normalisation) and ``cl_img_size``.

    Raises:
        KeyError: unknown name (the message lists valid ones).
        FileNotFoundError: the offline weights file is missing (the message says how to make it).
    """
    spec = backbone_spec(name)
    load = spec.pretrained if pretrained is None else pretrained
    kwargs = dict(spec.kwargs, num_classes=0)
    if load and spec.file:
        path = weights_path(name)
        if not path.exists():
            raise FileNotFoundError(
                f"weights of backbone '{name}' not found at {path}. They ship with the repository; "
                f"regenerate them with `python scripts/distill_offline_vit.py` (see cl_peft_lib/weights/MODEL_CARD.md).")
        # custom_load=False: the file is a plain state dict (safetensors), not a JAX .npz (timm < 1.0.31 guessed npz)
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path), num_classes=0, custom_load=False)
    if load:
        model = timm.create_model(spec.timm_name, pretrained=True, **kwargs)
    else:  # a random backbone is one fixed draw (seed 0), whatever the caller's RNG state
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    cfg = model.pretrained_cfg
    model.cl_tag = spec.tag if load else f"random:{name}"
    model.cl_mean = tuple(spec.mean or cfg.get("mean", (0.5, 0.5, 0.5)))
    model.cl_std = tuple(spec.std or cfg.get("std", (0.5, 0.5, 0.5)))
    model.cl_img_size = int(model.patch_embed.img_size[0])
    return model.eval()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file (the model card quotes it for the shipped weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (bit-exact identity check)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes() if v.numel() else b"")
    return h.hexdigest()
