"""The driver of one benchmark run: every configuration in turn (budget, errors kept), the ratios,
the targets, and :func:`run_benchmark`, the core that the command line and the tests call.

Chapter: ``notebooks/07_efficiency.ipynb`` (it reads the JSON this writes).
"""
from __future__ import annotations

import os
import time
import traceback
from typing import Callable

from cl_peft_lib.bench_report import format_table
from cl_peft_lib.methods import METHODS

from . import e2e, micro, references, trace
from .core import Bench
from .settings import REFERENCES, Settings
from .targets import compute_targets


def run_config(b: Bench, what: str, fn: Callable[[], dict], key: dict, reserve: float = 0.0) -> None:
    """Run one configuration ``fn`` unless the budget is spent; an exception becomes an ``error`` record.
    The record replaces an earlier one of the same key (name, batch size, compile, fused); the JSON is saved."""
    label = f"{key['name']} bs={key['batch_size']}" + (" compiled" if key.get("compile") else "") + \
            (" fused" if key.get("fused_optimizer") else "")
    if b.over_budget(reserve):
        rec = dict(key, status="skipped", note=f"time budget ({b.s.budget_s:.0f} s) spent before this config")
        b.log(f"[skip] {label}: over the time budget")
    else:
        t0 = time.perf_counter()
        try:
            rec = fn()
        except Exception as e:  # noqa: BLE001 - one failing method must not lose the others
            rec = dict(key, status="error", error=f"{type(e).__name__}: {e}",
                       traceback=traceback.format_exc()[-3000:])
            b.log(f"[error] {label}: {type(e).__name__}: {str(e)[:300]}")
        b.free()  # (after the except block: its traceback no longer holds the failed config's tensors)
        rec["wall_s"] = round(time.perf_counter() - t0, 2)
        if rec["status"] == "ok":
            inf = rec.get("infer_img_s", {}).get("inference_mode")
            fl, ms = rec.get("flops_train_step"), rec.get("train_step_ms")
            tf = f"{fl / ms / 1e9:.1f} TFLOP/s" if fl and ms else "-"
            b.log(f"[{what}] {label}: train {rec.get('train_img_s') or 0:.1f} img/s ({tf}), "
                  f"infer {inf or 0:.1f} img/s, {rec['wall_s']:.1f} s (t={b.elapsed():.0f} s)")
    rec["run"] = b.run_index  # which run of the file measured it (0: the first; --append adds runs)
    ident = ("name", "batch_size", "compile", "fused_optimizer")
    b.results["configs"] = [c for c in b.results["configs"]
                            if tuple(bool(c.get(k)) if k in ident[2:] else c.get(k) for k in ident)
                            != tuple(bool(rec.get(k)) if k in ident[2:] else rec.get(k) for k in ident)]
    b.results["configs"].append(rec)
    b.save()


def run_micro(b: Bench) -> None:
    """Ceiling, FLOP sanity, then every reference, method and variant at every batch size; ratios and targets."""
    s = b.s
    b.ceiling()
    b.flop_sanity(s.shapes["class"][0])
    wanted = list(dict.fromkeys(s.methods))
    present = [n for n in wanted if n in METHODS]
    b.results["skipped"] = [k for k in b.results.get("skipped", []) if k["method"] not in wanted]
    for n in wanted:
        if n not in METHODS:
            b.results["skipped"].append({"method": n, "reason": "not registered in cl_peft_lib.methods.METHODS "
                                         "at run time (being written); rerun when it lands"})
            b.log(f"[skip] {n}: not registered")

    def key(n, bs, compiled=False, fused=False):
        return {"name": n, "method": n, "batch_size": bs, "compile": compiled, "fused_optimizer": fused}
    for bs in ([] if s.compile_only else s.batch_sizes):
        if s.references:
            for r in REFERENCES:
                run_config(b, "ref", lambda r=r, bs=bs: references.bench_reference(b, r, bs), key(r, bs))
        for n in present:
            run_config(b, "method", lambda n=n, bs=bs: micro.bench_method(b, n, bs), key(n, bs))
        for n in s.fused_methods:
            if n in present:
                run_config(b, "fused", lambda n=n, bs=bs: micro.bench_method(b, n, bs, fused=True),
                           key(n, bs, fused=True))
    if s.compile or s.compile_only:
        for bs in (s.compile_batch_sizes or s.batch_sizes[:1]):
            for n in s.compile_methods:
                if n not in present:
                    continue
                reserve = 45.0 if s.mode == "gpu" else 0.0  # a compile of the ViT blocks takes tens of seconds
                run_config(b, "compiled", lambda n=n, bs=bs: micro.bench_method(b, n, bs, compiled=True),
                           key(n, bs, compiled=True), reserve=reserve)
    b.ceiling("end")
    finish_micro(b)


def finish_micro(b: Bench) -> None:
    """For the configurations this run measured: MFU against this run's final ceiling (the higher of start and
    end, stored with each as ``ceiling_tflops``), ratios to the references and the plain ViT of this same run
    (None where this run measured no reference: a ratio is only ever taken side by side); then the targets.
    Configurations kept from earlier runs of the file (``--append``) keep their own MFU and ratios."""
    cfgs = b.results["configs"]
    ceiling = (b.results.get("ceiling") or {}).get("tflops")
    ours = [c for c in cfgs if c.get("run", 0) == b.run_index]
    for c in ours:
        if c.get("status") == "ok" and c.get("flops_train_step"):
            c["ceiling_tflops"] = ceiling
            c["mfu"] = b.mfu(c["flops_train_step"], c.get("train_step_ms"))
            c["achieved_tflops"] = round(c["flops_train_step"] / (c["train_step_ms"] / 1000) / 1e12, 4)
    refs = {(c["name"], c["batch_size"]): c for c in ours if c.get("kind") == "reference" and c["status"] == "ok"}
    for c in ours:
        if c["status"] != "ok" or not c.get("train_img_s"):
            continue
        for r in REFERENCES:
            ref = refs.get((r, c["batch_size"]))
            c[f"train_ratio_{r}"] = round(c["train_img_s"] / ref["train_img_s"], 4) if ref else None
        ref = refs.get(("ref_full_ft", c["batch_size"]))
        c["infer_ratio_plain_vit"] = None
        if ref and c.get("infer_img_s"):
            pv = ref["infer_img_s"].get("inference_mode")
            c["infer_ratio_plain_vit"] = {k: round(v / pv, 4) for k, v in c["infer_img_s"].items() if pv}
    b.results["targets"] = compute_targets(cfgs, max(b.s.batch_sizes) if b.s.batch_sizes else None,
                                           b.results.get("e2e", []), b.s.mode)
    b.save()


def run_traces(b: Bench) -> None:
    """Profiler traces (:mod:`.trace`) of ``settings.trace`` at the largest batch size, eager (and compiled with
    ``--compile``), into ``results["traces"]`` (replacing earlier traces of the same method, batch and mode)."""
    s = b.s
    if not (b.results.get("ceiling") or {}).get("tflops"):
        b.ceiling()
    bs = max(s.batch_sizes)
    for n in s.trace:
        for compiled in ([False, True] if s.compile else [False]):
            t0 = time.perf_counter()
            try:
                rec = trace.trace_method(b, n, bs, steps=s.trace_steps, compiled=compiled)
                b.log(f"[trace] {rec['name']} bs={bs}: {rec['img_s']:,.0f} img/s, GPU busy "
                      f"{100 * rec['gpu_busy_frac']:.0f}%, kernel time {rec['kernel_share_by_family']}, MFU {rec['mfu']} "
                      f"(never idle {rec['mfu_if_gpu_never_idle']}, tensor-core kernels only "
                      f"{rec['mfu_if_only_tensor_core']})")
            except Exception as e:  # noqa: BLE001 - one failing trace must not lose the others
                rec = {"name": n + ("+compile" if compiled else ""), "method": n, "batch_size": bs, "compile": compiled,
                       "status": "error", "error": f"{type(e).__name__}: {e}"}
                b.log(f"[error] trace {n}: {rec['error'][:300]}")
            b.free()
            rec.update(run=b.run_index, wall_s=round(time.perf_counter() - t0, 2))
            b.results["traces"] = [t for t in b.results.get("traces", []) if (t["method"], t["batch_size"],
                                   bool(t["compile"])) != (n, bs, compiled)] + [rec]
            b.save()


def run_benchmark(settings: Settings, out: str | None = None, log: Callable[[str], None] | None = None,
                  append_to: dict | None = None) -> dict:
    """The core: run the micro-benchmarks (unless ``skip_micro``) and the requested e2e runs; return the results.

    Args:
        settings: what to run.
        out: JSON path written after every config (None: nothing written).
        log: progress printer.
        append_to: an earlier results dict whose configs/e2e entries this run updates (``--append``).
    """
    b = Bench(settings, out, log)
    if append_to:
        keep = append_to
        keep["provenance_runs"] = keep.get("provenance_runs", []) + [b.results["provenance"]]
        b.results, old = keep, b.results
        b.results["status"] = "running"
        b.run_index = len(keep["provenance_runs"])  # run 0 is the file's first (its "provenance")
        runs = keep.setdefault("ceiling_runs", [(keep.get("ceiling") or {}).get("tflops")])
        runs += [None] * (b.run_index + 1 - len(runs))
        b.results["ceiling"] = None  # this run measures its own; the earlier runs' stay in ceiling_runs
        b.results.setdefault("reference_flops", old["reference_flops"])
        b.results.setdefault("notes", [])
        for n in old["notes"]:
            if n not in b.results["notes"]:
                b.results["notes"].append(n)
        b.results.setdefault("configs", [])
        b.results["e2e"] = [e for e in b.results.get("e2e", []) if e.get("method") not in settings.e2e]
    try:
        if not settings.skip_micro:
            run_micro(b)
            if settings.e2e:  # the micro table now, in case the end-to-end runs outlast the caller's time limit
                b.log(format_table(b.results))
        if settings.e2e:
            e2e.run_e2e(b)
        if settings.trace:
            run_traces(b)
        bs = max(settings.batch_sizes) if settings.batch_sizes else None
        if b.results.get("configs"):
            bs = max(c["batch_size"] for c in b.results["configs"])
        b.results["targets"] = compute_targets(b.results.get("configs", []), bs, b.results.get("e2e", []), settings.mode)
        if b.results.get("traces"):  # each missed training target read off the profiler traces
            trace.explain_targets(b.results, b.results["traces"])
        b.results["status"] = "complete"
    finally:
        b.results["wall_s"] = round(b.elapsed(), 1)
        if hasattr(os, "getloadavg"):
            b.results["provenance"]["loadavg_end"] = list(os.getloadavg())
        if b.results["status"] != "complete":
            b.results["status"] = "incomplete"
        b.save()
    return b.results
