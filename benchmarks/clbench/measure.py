"""Measuring utilities: synchronised timing, CUDA peak memory and the dense matmul FLOP ceiling.

Chapter: ``notebooks/07_efficiency.ipynb`` (its throughputs, memory and MFU come from these).
"""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

import torch

from .settings import GIB


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA only; CPU work is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], Any], items: int, warmup: int, steps: int, repeats: int, device: torch.device,
            stat: str = "median") -> dict:
    """Run ``fn`` ``warmup`` times, then ``repeats`` x ``steps`` timed times (synchronised around each repeat).

    Returns ``img_s`` (over repeats of ``items * steps / seconds``: the median, or with ``stat="best"``
    the fastest repeat, the usual estimate on a shared machine), the per-repeat values, ``step_ms``
    (from the same statistic) and ``warmup_s`` (wall time of the warm-up, e.g. compilation).
    """
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        secs.append(time.perf_counter() - t0)
    rates = [items * steps / s for s in secs]
    sec = min(secs) if stat == "best" else statistics.median(secs)
    return {"img_s": items * steps / sec, "img_s_repeats": [round(r, 2) for r in rates],
            "step_ms": 1000 * sec / steps, "warmup_s": round(warm, 3)}


def mem_start(device: torch.device) -> int:
    """Reset the CUDA peak counter; return what is allocated now (0 on a CPU)."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def mem_peak_gib(device: torch.device, base: int) -> float | None:
    """Peak CUDA memory since :func:`mem_start` above its ``base``, in GiB (None on a CPU)."""
    if device.type != "cuda":
        return None
    return round((torch.cuda.max_memory_allocated(device) - base) / GIB, 3)


def grad_ctx(mode: str):
    """``torch.inference_mode()`` for ``"inference_mode"``, else ``torch.no_grad()`` (as ``Runner.evaluate``)."""
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def measure_ceiling(device: torch.device, n: int, iters: int, dtype: torch.dtype, stat: str = "median") -> dict:
    """Dense ``n x n @ n x n`` matmul throughput in ``dtype`` (the FLOP ceiling of model FLOP utilisation)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    r = measure(lambda: a @ b, 1, 3, iters, 3, device, stat)
    del a, b
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "iters": iters, "tflops": 2 * n ** 3 * r["img_s"] / 1e12,
            "tflops_repeats": [round(2 * n ** 3 * x / 1e12, 4) for x in r["img_s_repeats"]]}
