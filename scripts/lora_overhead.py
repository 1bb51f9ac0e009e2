"""Inference-time overhead of S-LoRA (routed vs merged) and L2L against the plain frozen ViT.

Times are medians over ``--repeats`` batches (after one warm-up; the paths take turns), under the loop's
autocast (bf16 on a GPU, fp32 on a CPU). Adapters get random non-zero B factors
(a trained adapter costs the same). Rows:

* ``vit``: one forward of the frozen ViT (the unit of every ratio).
* ``slora_routed_mixed``: the adapted pass only, peft's ``adapter_names`` with the batch spread over all domains.
* ``slora_routed_one`` / ``slora_merged_one``: the adapted pass, whole batch of one domain, routed or
  through peft's merged weights (merge + forward + unmerge and restore).
* ``slora_predict_routed`` / ``slora_predict_merged``: full ``predict`` (query pass, k-means, adapted pass).
* ``l2l_features``: the pooled LoRA pass only; ``l2l_predict``: full ``predict`` (query, top-N, pooled pass).

Usage::

    python scripts/lora_overhead.py --device cpu --backbone random_vit_tiny_p4_28 --batch 64

Chapter: ``notebooks/04_lora.ipynb`` (CPU) and ``07_efficiency.ipynb`` (GPU).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.evaluation import EvalConfig
from cl_peft_lib.methods.lora import L2L, L2LConfig, SLoRA, SLoRAConfig
from cl_peft_lib.utils import autocast, resolve_device


def _median_times(paths: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call; the paths take turns, so a busy machine slows them alike."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ts: dict[str, list[float]] = {k: [] for k in paths}
    with torch.no_grad(), autocast(device):
        for f in paths.values():  # warm-up
            f()
        for _ in range(repeats):
            for k, f in paths.items():
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def _randomize_B(module: torch.nn.Module) -> None:
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n or n.startswith("loras.B"):
                p.normal_(0, 0.02)


def measure_overhead(backbone: str = "random_vit_tiny_p4_28", batch: int = 64, repeats: int = 7,
                     device: str = "cpu", domains: int = 4, num_classes: int = 10) -> dict[str, dict[str, float]]:
    """Median seconds per batch and ratio to the plain ViT for each inference path (see module docstring)."""
    dev = resolve_device(device)
    size = create_backbone(backbone).cl_img_size
    x = torch.randn(batch, 3, size, size, device=dev)
    spread = torch.arange(batch, device=dev) % domains
    one = torch.zeros(batch, dtype=torch.long, device=dev)

    vit = create_backbone(backbone).to(dev)
    s = SLoRA(create_backbone(backbone), "domain", num_classes, domains, SLoRAConfig()).to(dev)
    for t in range(domains):
        s.begin_task(t, list(range(num_classes)))
    _randomize_B(s)
    s.eval()
    with torch.no_grad(), autocast(dev):
        for t in range(domains):  # k-means centroids from some random inputs per domain
            s.identifier.add_task(t, s.query(torch.randn(16, 3, size, size, device=dev) + t).float())
    l2l = L2L(create_backbone(backbone), "class", num_classes, 1, L2LConfig()).to(dev)
    l2l.begin_task(0, list(range(num_classes)))
    _randomize_B(l2l)
    l2l.eval()
    idx = l2l.pool.select(l2l.query(x))[0]

    def merged(fn):
        def run():
            s.set_eval(EvalConfig(merged_inference=True))
            try:
                return fn()
            finally:
                s.set_eval(EvalConfig())
        return run

    paths = {
        "vit": lambda: vit.forward_head(vit.forward_features(x), pre_logits=True),
        "slora_routed_mixed": lambda: s.peft_features(x, spread),
        "slora_routed_one": lambda: s.peft_features(x, one),
        "slora_merged_one": merged(lambda: s.peft_features(x, one)),
        "slora_predict_routed": lambda: s.predict(x),
        "slora_predict_merged": merged(lambda: s.predict(x)),
        "l2l_features": lambda: l2l.peft_features(x, idx),
        "l2l_predict": lambda: l2l.predict(x),
    }
    secs = _median_times(paths, repeats, dev)
    return {k: {"seconds": round(v, 5), "ratio_to_vit": round(v / secs["vit"], 3)} for k, v in secs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="random_vit_tiny_p4_28")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(measure_overhead(a.backbone, a.batch, a.repeats, a.device), indent=1))


if __name__ == "__main__":
    main()
