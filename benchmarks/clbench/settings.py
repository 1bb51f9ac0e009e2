"""What one benchmark run depends on: the :class:`Settings`, the two mode presets and the backbones.

Chapter: ``notebooks/07_efficiency.ipynb`` (the settings are written to the JSON it reads).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from cl_peft_lib import backbones as _bb
from cl_peft_lib.profiles import get_profile

SCHEMA = "cl-peft-bench/1"
#: The methods of issue 7, in the order of the table.
ISSUE_METHODS = ("finetune", "linear_probe", "l2p", "sprompts", "dualprompt", "lora", "l2l", "slora")
#: The two naive references of issue 7.
REFERENCES = ("ref_full_ft", "ref_peft_lora")
#: Benchmark-only backbone names (registered locally in this process, never in the library).
GPU_BACKBONE = "bench_vit_base_patch16_224"
#: Scenario shapes (num_classes, num_tasks): paper scale = Split CIFAR-100 / CORe50, offline = offline-cil / -dil.
SHAPES = {"gpu": {"class": (100, 10), "domain": (50, 8)}, "cpu": {"class": (30, 5), "domain": (10, 4)}}
GIB = 2 ** 30


@dataclass
class Settings:
    """Everything one benchmark run depends on (written to the JSON as ``settings``)."""

    mode: str = "cpu"
    backbone: str | None = None
    batch_sizes: list[int] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: list(ISSUE_METHODS))
    references: bool = True
    warmup: int = 1
    steps: int = 3
    repeats: int = 2
    infer_warmup: int | None = None
    infer_steps: int | None = None
    compile: bool = False
    compile_methods: list[str] = field(default_factory=lambda: ["finetune", "lora", "l2p"])
    compile_batch_sizes: list[int] | None = None
    fused_methods: list[str] = field(default_factory=lambda: ["finetune"])
    infer_all_tasks: bool = True
    threads: int | None = None
    budget_s: float | None = None
    ceiling_n: int = 1024
    ceiling_iters: int = 5
    shapes: dict = field(default_factory=dict)
    seed: int = 0
    e2e: list[str] = field(default_factory=list)
    e2e_epochs: int = 5
    e2e_tasks: int = 10
    e2e_train: int = 50_000
    e2e_test: int = 10_000
    e2e_img: int = 32
    e2e_classes: int = 100
    e2e_batch: int = 128
    skip_micro: bool = False
    compile_only: bool = False
    trace: list[str] = field(default_factory=list)
    trace_steps: int = 8
    stat: str = "median"
    notes: list[str] = field(default_factory=list)


def preset(mode: str) -> Settings:
    """Defaults of a mode: ``gpu`` (paper scale, ~4 min on an H200) or ``cpu`` (offline-track scale)."""
    if mode == "gpu":
        return Settings(mode="gpu", backbone=GPU_BACKBONE, batch_sizes=[256, 128], warmup=3, steps=5, repeats=3,
                        infer_warmup=2, infer_steps=4,
                        budget_s=230.0, ceiling_n=8192, ceiling_iters=20, shapes=SHAPES["gpu"])
    if mode == "cpu":
        # A shared 2-core CPU: the fastest of 5 one-step repeats (others' jobs only ever slow a repeat down).
        return Settings(mode="cpu", backbone=cpu_backbone(), batch_sizes=[64], warmup=1, steps=1, repeats=5,
                        threads=2, ceiling_n=1024, ceiling_iters=5, shapes=SHAPES["cpu"], stat="best",
                        infer_all_tasks=False)
    raise ValueError(f"unknown mode '{mode}'; valid: gpu, cpu")


def cpu_backbone() -> str:
    """The offline track's backbone (the ``offline`` profile's), built with random weights."""
    return get_profile("offline").backbone


def ensure_backbone(name: str) -> str:
    """Register the benchmark-only ViT-B/16 spec in this process (the library's registry file is not edited)."""
    if name == GPU_BACKBONE and name not in _bb.BACKBONES:
        # ViT-B/16 as in the paper, random weights (speed does not depend on the values; no download).
        _bb.BACKBONES[name] = _bb.BackboneSpec("vit_base_patch16_224", pretrained=False, tag="random:vit_base_patch16_224")
    if name not in _bb.BACKBONES:
        raise KeyError(f"unknown backbone '{name}'; valid: {', '.join(sorted(_bb.BACKBONES))}")
    return name


def build_backbone(name: str, device: torch.device) -> nn.Module:
    """``create_backbone(name, pretrained=False)`` moved to ``device`` (random weights: speed only)."""
    return _bb.create_backbone(name, pretrained=False).to(device)
