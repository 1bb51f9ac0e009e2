"""The state of one benchmark run, :class:`Bench`: device, shared backbone, results, ceiling, FLOP sanity.

Chapter: ``notebooks/07_efficiency.ipynb`` (it reads the JSON this writes).
"""
from __future__ import annotations

import copy
import datetime as _dt
import gc
import os
import time
from dataclasses import asdict
from typing import Any, Callable

import torch

from cl_peft_lib.utils import amp_dtype, atomic_write_json, autocast, provenance, seed_everything

from .flops import flop_counter, flop_summary, vit_forward_flops
from .measure import measure, measure_ceiling
from .settings import GPU_BACKBONE, SCHEMA, Settings, build_backbone, cpu_backbone, ensure_backbone


class Bench:
    """One benchmark run: settings, device, the shared backbone, and the results dict."""

    def __init__(self, s: Settings, out: str | None = None, log: Callable[[str], None] | None = None) -> None:
        self.s = s
        self.out = out
        self.log = log or (lambda msg: print(msg, flush=True))  # (flushed: a killed run keeps its progress lines)
        self.t_start = time.perf_counter()
        self.run_index = 0  # which run of the results file this is (run.run_benchmark sets it for --append)
        if s.mode == "gpu":
            if not torch.cuda.is_available():
                raise RuntimeError("--mode gpu needs CUDA; use --mode cpu on this machine")
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
        if s.threads:
            torch.set_num_threads(s.threads)
        seed_everything(s.seed)
        s.backbone = ensure_backbone(s.backbone or (GPU_BACKBONE if s.mode == "gpu" else cpu_backbone()))
        self.base = build_backbone(s.backbone, self.device)
        b = self.base
        self.attrs = (b.cl_img_size, b.cl_mean, b.cl_std)
        self.amp = amp_dtype(self.device)
        self.scenarios: dict[str, Any] = {}  # synthetic scenarios of the micro-benchmarks, by kind (micro.py)
        self.results: dict[str, Any] = {
            "schema": SCHEMA, "mode": s.mode, "status": "running",
            "provenance": self._provenance(), "settings": asdict(s), "ceiling": None, "reference_flops": None,
            "configs": [], "skipped": [], "targets": [], "e2e": [], "notes": s.notes,
        }

    # ------------------------------------------------------------------ bookkeeping
    def elapsed(self) -> float:
        return time.perf_counter() - self.t_start

    def over_budget(self, reserve: float = 0.0) -> bool:
        return self.s.budget_s is not None and self.elapsed() + reserve > self.s.budget_s

    def _provenance(self) -> dict:
        import timm.layers

        p = provenance(self.device, backbone=self.base.cl_tag)
        p.update({
            "gpu": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "amp_dtype": str(amp_dtype(self.device)).replace("torch.", ""),
            "timm_fused_attn": bool(timm.layers.use_fused_attn()),
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "iso_date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        if self.device.type == "cuda":
            p["sdpa_backends_enabled"] = {
                "flash": torch.backends.cuda.flash_sdp_enabled(), "mem_efficient": torch.backends.cuda.mem_efficient_sdp_enabled(),
                "cudnn": getattr(torch.backends.cuda, "cudnn_sdp_enabled", lambda: None)(),
                "math": torch.backends.cuda.math_sdp_enabled()}
        else:
            p["cpu_note"] = (f"CPU shared with other workers ({os.cpu_count()} cores, other jobs running, see loadavg_*): "
                             f"numbers are the fastest of {self.s.repeats} repeats and still indicative only "
                             f"(expect +-30% between runs)")
        return p

    def save(self) -> None:
        if self.out:
            atomic_write_json(self.out, self.results)

    def input(self, bs: int, classes: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A synthetic model-ready batch: normalised float images of the model's size, labels from ``classes``."""
        size = self.attrs[0]
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = torch.randn(bs, 3, size, size, device=self.device, generator=g)
        y = torch.tensor(classes, device=self.device)[torch.randint(len(classes), (bs,), device=self.device, generator=g)]
        return x, y

    def free(self) -> None:
        if self.device.type == "cuda":  # (a full gc.collect costs seconds on a loaded CPU, and nothing is measured there)
            gc.collect()
            torch.cuda.empty_cache()

    def measure(self, fn: Callable[[], Any], items: int, infer: bool = False) -> dict:
        """:func:`~.measure.measure` with this run's warm-up, steps, repeats and statistic."""
        s = self.s
        if infer:
            return measure(fn, items, s.infer_warmup or s.warmup, s.infer_steps or s.steps, s.repeats, self.device, s.stat)
        return measure(fn, items, s.warmup, s.steps, s.repeats, self.device, s.stat)

    # ------------------------------------------------------------------ ceiling and FLOP sanity
    def ceiling(self, when: str = "start") -> None:
        """The matmul ceiling, measured at the start and again at the end of the run; the higher one is used."""
        dt = (self.amp or torch.float32)
        c = measure_ceiling(self.device, self.s.ceiling_n, self.s.ceiling_iters, dt, self.s.stat)
        prev = self.results.get("ceiling") or {}
        prev.update({k: v for k, v in c.items() if k != "tflops"})
        prev[f"tflops_{when}"] = c["tflops"]
        prev["tflops"] = max(v for k, v in prev.items() if k in ("tflops_start", "tflops_end"))
        self.results["ceiling"] = prev
        if "ceiling_runs" in self.results:  # an appended file: each run's ceiling, by run index
            self.results["ceiling_runs"][self.run_index] = prev["tflops"]
        self.log(f"[ceiling] {c['dtype']} {self.s.ceiling_n}^3 matmul ({when}): {c['tflops']:.4g} TFLOP/s")
        self.save()

    def mfu(self, flops_per_step: int | None, step_ms: float | None) -> float | None:
        c = self.results.get("ceiling")
        if not c or not flops_per_step or not step_ms:
            return None
        return round(flops_per_step / (step_ms / 1000) / (c["tflops"] * 1e12), 4)

    def flop_sanity(self, C: int) -> None:
        """Counted vs analytic forward FLOPs of the plain ViT + head (checks attention is counted)."""
        model = copy.deepcopy(self.base)
        model.reset_classifier(C)
        model.to(self.device).eval()
        x, _ = self.input(2, [0])
        with torch.no_grad(), autocast(self.device), flop_counter() as fc:
            model(x)
        total, by_op = flop_summary(fc)
        analytic = vit_forward_flops(model, C)
        per = total / 2
        self.results["reference_flops"] = {
            "vit_fwd_flops_per_img_counted": per, "vit_fwd_flops_per_img_analytic": analytic,
            "rel_diff": round(per / analytic - 1, 5), "by_op": by_op,
            "ok": abs(per / analytic - 1) < 0.02}
        if not self.results["reference_flops"]["ok"]:
            self.results["notes"].append(f"FLOP count of the plain ViT forward ({per:.4g}/img) differs from the analytic "
                                         f"{analytic:.4g}/img by more than 2%: check the SDPA op in by_op is counted")
        del model
        self.free()
