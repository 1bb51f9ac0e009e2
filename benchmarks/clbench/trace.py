"""Profiler traces of the training step (issue 16, item 6): where a step's GPU time goes, by kernel family.

:func:`trace_method` builds a method as the micro-benchmark does (:func:`.micro.build_runner`), warms up the
loop's own :func:`cl_peft_lib.loop.train_step`, and records a few steps with ``torch.profiler`` (CPU and CUDA
activity). It reports, per step, the GPU kernel time by family (matrix products, attention, norms, elementwise,
optimizer, copies/casts), how much of the wall time the GPU was busy at all (the rest waits on the host), the
host-device synchronisations (``cudaStreamSynchronize``; ``aten::_local_scalar_dense`` counts every ``.item()``,
also of the optimizer's CPU step counters, which wait for nothing), and two bounds read off the trace: the
model-FLOP utilisation (MFU) the step would reach if the GPU never idled, and if moreover every kernel but the
tensor-core ones (matrix products and attention, whose FLOPs are what MFU counts) took no time. A target the step misses is explained by which
of these bounds already falls short of it. :func:`explain_targets` writes that reading next to each missed
training target of a results file.

Chapter: ``notebooks/07_efficiency.ipynb`` ("Targets").
"""
from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import torch

from .measure import sync
from .micro import build_runner, loop_step, train_step_flops, training_state
from .variants import compile_blocks

if TYPE_CHECKING:
    from .core import Bench

#: kernel family -> pattern on the CUDA kernel name (first match wins; the order matters: cuDNN's attention
#: kernels name sm90 and wgmma too, and a cuBLAS kernel that names its epilogue is still a matrix product)
FAMILIES: list[tuple[str, str]] = [
    ("attention", r"flash|fmha|attention|sdpa|efficient_attention"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|wgmma|sm90_|splitk"),
    ("norm", r"layer_norm|layernorm|norm_kernel|rms"),
    ("optimizer", r"multi_tensor|adam|fused_.*optim|foreach"),
    ("copy_cast", r"copy|cast|memcpy|memset|to_copy|convert"),
    ("elementwise", r"elementwise|gelu|softmax|reduce|triton|add|mul|dropout|where|index|gather|scatter|cat"),
]
#: the training targets a trace explains (targets.py names) -> the method traced for it
TRACED_TARGETS = {"finetune_train_img_s": "finetune", "lora_train_img_s": "lora"}


def family(name: str) -> str:
    """The kernel family of a CUDA kernel name (``other`` when no pattern matches)."""
    low = name.lower()
    for fam, pat in FAMILIES:
        if re.search(pat, low):
            return fam
    return "other"


def _busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (µs): the time at least one kernel ran."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def trace_method(b: Bench, name: str, bs: int, steps: int = 8, warmup: int = 6, compiled: bool = False) -> dict:
    """Profile ``steps`` training steps of ``name`` at batch ``bs`` (see the module docstring).

    Returns:
        a record: ``step_ms`` (wall, profiled), ``gpu_busy_frac``, ``kernel_ms_per_step`` by family,
        ``top_kernels``, ``host_syncs_per_step``, ``mfu`` and the two bounds ``mfu_if_gpu_never_idle`` and
        ``mfu_if_only_tensor_core`` (matrix products and attention), and those kernels' own rate ``tensor_core_tflops``.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    r = build_runner(b, name, bs)
    m, cfg, dev = r.method, r.mcfg, r.device
    task0 = r.scenario.tasks[0]
    m.begin_task(0, task0.classes)
    x, y = b.input(bs, task0.classes)
    state = training_state(r, warmup + steps + 4)
    if state is None:
        raise ValueError(f"{name} has no training step to trace")
    opt, sched, scaler, params = state
    m.train()
    flops, _ = train_step_flops(m, x, y, opt, scaler, dev)
    rec: dict[str, Any] = {"name": name + ("+compile" if compiled else ""), "method": name, "batch_size": bs,
                           "compile": compiled, "flops_train_step": flops}
    if compiled:
        rec["compiled_blocks"] = compile_blocks(m)

    step = loop_step(m, x, y, opt, scaler, params, cfg, dev, sched, " in the trace")
    for _ in range(warmup):
        step()
    sync(dev)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        sync(dev)
        wall_ms = (time.perf_counter() - t0) * 1000 / steps
    step.check()
    kernels, by_family, by_name = [], {}, {}
    syncs = {"aten::_local_scalar_dense": 0, "cudaStreamSynchronize": 0, "cudaDeviceSynchronize": 0,
             "cudaMemcpyAsync": 0}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            s, t = e.time_range.start, e.time_range.end
            kernels.append((s, t))
            fam = family(e.name)
            by_family[fam] = by_family.get(fam, 0.0) + (t - s)
            by_name[e.name] = by_name.get(e.name, 0.0) + (t - s)
        elif e.name in syncs:
            syncs[e.name] += 1
    kernel_ms = sum(by_family.values()) / 1000 / steps
    busy_ms = _busy_us(kernels) / 1000 / steps
    ceiling = (b.results.get("ceiling") or {}).get("tflops")

    def mfu(ms):
        return round(flops / (ms / 1000) / (ceiling * 1e12), 4) if ceiling and ms else None
    mm_ms = (by_family.get("matmul", 0.0) + by_family.get("attention", 0.0)) / 1000 / steps
    rec.update(
        steps=steps, step_ms=round(wall_ms, 3), img_s=round(bs / wall_ms * 1000, 1), ceiling_tflops=ceiling,
        gpu_busy_ms=round(busy_ms, 3), gpu_busy_frac=round(busy_ms / wall_ms, 4), kernel_ms_per_step=round(kernel_ms, 3),
        kernel_ms_by_family={k: round(v / 1000 / steps, 3) for k, v in sorted(by_family.items(), key=lambda kv: -kv[1])},
        kernel_share_by_family={k: round(v / 1000 / steps / kernel_ms, 4) for k, v in
                                sorted(by_family.items(), key=lambda kv: -kv[1])} if kernel_ms else {},
        top_kernels=[{"name": n[:160], "family": family(n), "ms_per_step": round(v / 1000 / steps, 3)}
                     for n, v in sorted(by_name.items(), key=lambda kv: -kv[1])[:12]],
        kernels_per_step=round(len(kernels) / steps, 1),
        host_syncs_per_step={k: round(v / steps, 2) for k, v in syncs.items()},
        mfu=mfu(wall_ms), mfu_if_gpu_never_idle=mfu(busy_ms), mfu_if_only_tensor_core=mfu(mm_ms),
        tensor_core_ms=round(mm_ms, 3), tensor_core_tflops=round(flops / (mm_ms / 1000) / 1e12, 1) if mm_ms else None,
        status="ok",
    )
    del m, r, opt, sched, params, state, x, y
    b.free()
    return rec


def explain(target: dict, traces: list[dict]) -> str | None:
    """One reading of the traces for a missed training-throughput ``target`` (None: no trace of its method)."""
    name = target["name"]
    method = next((m for k, m in TRACED_TARGETS.items() if name.startswith(k)), None)
    bs = int(name.rsplit("_bs", 1)[1]) if "_bs" in name else None
    mine = [t for t in traces if t.get("method") == method and t.get("batch_size") == bs and t.get("status") == "ok"
            and t.get("gpu_busy_frac")]  # (a CPU trace has no kernels to read)
    if not mine or target.get("pass_any") or target.get("applies") is False:
        return None
    need = target["threshold"]
    parts = []
    for t in sorted(mine, key=lambda t: t["compile"]):
        top = ", ".join(f"{k} {100 * v:.0f}%" for k, v in list(t["kernel_share_by_family"].items())[:5])
        img_busy = t["img_s"] / t["gpu_busy_frac"]
        img_mm = t["batch_size"] / t["tensor_core_ms"] * 1000
        parts.append(
            f"{'compiled' if t['compile'] else 'eager'}: {t['img_s']:,.0f} img/s in the trace; the GPU is busy "
            f"{100 * t['gpu_busy_frac']:.0f}% of the step (never idle: {img_busy:,.0f} img/s, MFU "
            f"{t['mfu_if_gpu_never_idle']:.2f}); kernel time {top}; the tensor-core kernels (matrix products and "
            f"attention) alone run at {t['tensor_core_tflops']:.0f} TFLOP/s ({img_mm:,.0f} img/s if nothing else took "
            f"time, MFU {t['mfu_if_only_tensor_core']:.2f}); host-device syncs per step "
            f"{t['host_syncs_per_step']['cudaStreamSynchronize']:g}")
    best = max(mine, key=lambda t: t["img_s"])
    img_mm = best["batch_size"] / best["tensor_core_ms"] * 1000
    cause = ("even the tensor-core kernels alone are too slow for it: the miss is their own rate at these shapes"
             if img_mm < need else
             "the tensor-core kernels alone would meet it: the miss is the time outside them "
             f"({100 * (1 - best['tensor_core_ms'] / best['step_ms']):.0f}% of the best step: the other kernels and idle gaps)")
    return f"target {need:,} img/s; " + "; ".join(parts) + f". Reading: {cause}."


def explain_targets(results: dict, traces: list[dict]) -> list[str]:
    """Write ``explained_by_trace`` into each missed training target of ``results`` that a trace covers;
    returns the names explained."""
    done = []
    for t in results.get("targets", []):
        why = explain(t, traces)
        if why:
            t["explained_by_trace"] = why
            done.append(t["name"])
    return done
