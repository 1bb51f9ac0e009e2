"""The two naive references of issue 7, written the way a user would: timm ViT + AdamW full
fine-tuning, and peft ``LoraConfig(r=8, target_modules=["qkv"])``.

Chapter: ``notebooks/07_efficiency.ipynb`` (the ``x full FT`` and ``x peft LoRA`` columns).
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from cl_peft_lib.utils import autocast

from .flops import flop_counter, flop_summary
from .measure import grad_ctx, mem_peak_gib, mem_start
from .variants import peft_merged

if TYPE_CHECKING:
    from .core import Bench


def bench_reference(b: Bench, name: str, bs: int) -> dict:
    """A naive user-written training loop: timm ViT + linear head, AdamW, bf16 autocast, CE loss."""
    dev = b.device
    C, _ = b.s.shapes["class"]
    rec = {"name": name, "method": name, "kind": "reference", "batch_size": bs, "compile": False,
           "fused_optimizer": False, "status": "running"}
    base_mem = mem_start(dev)
    model = copy.deepcopy(b.base)
    model.reset_classifier(C)  # timm's own linear head
    model.to(dev)
    if name == "ref_peft_lora":
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=8, target_modules=["qkv"]))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = b.input(bs, list(range(C)))

    def forward_backward():
        with autocast(dev):
            loss = F.cross_entropy(model(x), y)
        loss.backward()

    def step():
        forward_backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with flop_counter() as fc:
        forward_backward()
    opt.zero_grad(set_to_none=True)
    flops, by_op = flop_summary(fc)
    tr = b.measure(step, bs)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    rec.update(train_img_s=tr["img_s"], train_img_s_repeats=tr["img_s_repeats"], train_step_ms=tr["step_ms"],
               peak_mem_train_gib=mem_peak_gib(dev, base_mem), trainable_params=trainable, optimizer_params=trainable,
               flops_train_step=flops, flops_train_per_img=flops / bs, flops_by_op=by_op)
    del opt
    model.eval()
    infer = {}
    base_inf = mem_start(dev)

    def predict(mode: str):
        def f():
            with grad_ctx(mode), autocast(dev):
                return model(x)
        return b.measure(f, bs, infer=True)["img_s"]

    for mode in ("no_grad", "inference_mode"):
        infer[mode] = predict(mode)
    if name == "ref_peft_lora":
        with peft_merged(model):
            infer["merged_inference_mode"] = predict("inference_mode")
    rec.update(infer_img_s=infer, peak_mem_infer_gib=mem_peak_gib(dev, base_inf), status="ok")
    del model, x, y
    b.free()
    return rec
