"""benchmarks/clbench/micro.fp16_skipped_steps counts the steps a GradScaler skipped for inf gradients."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from clbench.micro import fp16_skipped_steps  # noqa: E402


def test_skipped_steps_are_counted():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([w], lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    for scale in (1.0, float("inf"), 1.0, float("inf"), float("inf")):
        opt.zero_grad()
        scaler.scale((w * scale).sum()).backward()
        scaler.step(opt)
        scaler.update()
    assert fp16_skipped_steps(scaler) == 3
    assert torch.isfinite(w).all()
