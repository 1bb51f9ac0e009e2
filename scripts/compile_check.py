"""Where does regional ``torch.compile`` pay? Whole runs through the loop, eager and compiled, side by side.

For each profile, each method is run twice through :func:`cl_peft_lib.loop.run_continual` in this one process,
eager (``CL_PEFT_COMPILE=off``) and then compiled (``CL_PEFT_COMPILE=on``), and the per-task train/evaluation
times, the wall time (compilation included), the losses and the accuracies are recorded. Inductor's on-disk
cache starts empty (a fresh ``TORCHINDUCTOR_CACHE_DIR``), so the first compiled run of a profile pays the full
compilation, as a fresh Colab session would; later runs find the cache, as later runs of a chapter do.

* ``colab``: the profile's cut of Split CIFAR-100 through the paper loader (fabricated pickles in the official
  format, a randomly initialised ViT-B/16), in fp16 with the GradScaler as on a T4 (``CL_PEFT_AMP=fp16``);
* ``paper-1ep``: the paper profile's full Split CIFAR-100 (500 images per class), one epoch per task;
* ``offline``: the offline track (carried data, ``$CL_PEFT_OFFLINE_DATA``), both offline benchmarks;
  the paper-1ep and offline plans in bf16, as the H200 trains them.

Usage (on the GPU machine)::

    python scripts/compile_check.py OUT.json [colab|paper-1ep|offline ...]   # or NAME:method,method; adds to OUT

The record is ``cl_peft_lib/records/compile_check.json``; :mod:`cl_peft_lib.compiling` reads its verdicts
(``tests/test_compiling.py`` checks its ``PAYS_PROFILES`` against them).

Chapter: ``notebooks/07_efficiency.ipynb`` (compiled runs).
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from cl_peft_lib.compiling import COMPILE_ENV, dynamo_stats
from cl_peft_lib.data.fabricate import write_cifar100
from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.profiles import get_profile
from cl_peft_lib.utils import provenance

BACKBONE = "random_vit_base_patch16_224"  # cl_peft_lib.backbones: the paper ViT-B/16, random weights
#: (profile, benchmark, method, method options) in the order they run
PLAN = {
    "colab": [("colab", "split-cifar100", m, {}) for m in ("finetune", "l2p", "dualprompt", "lora", "l2l")],
    "paper-1ep": [("paper", "split-cifar100", m, {"epochs": 1}) for m in ("lora", "l2p")],
    "offline": [("offline", "offline-cil", m, {}) for m in ("l2p", "lora")]
    + [("offline", "offline-dil", m, {}) for m in ("sprompts", "slora")],
}

#: mixed precision per plan: the colab cut as on a T4 (fp16 + GradScaler), the others as the H200 runs them
AMP = {"colab": "fp16"}


def one_run(profile: str, benchmark: str, method: str, opts: dict, mode: str) -> dict:
    """One run under ``CL_PEFT_COMPILE=mode``: times, losses, accuracies, dynamo's counts."""
    os.environ[COMPILE_ENV] = mode
    backbone = BACKBONE if profile != "offline" else None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = run_continual(RunConfig(method, benchmark, profile, seed=0, device="cuda", backbone=backbone,
                                  method_options=opts, progress=False, out_dir=None))
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    row = {"mode": mode, "wall_s": round(wall, 2),
           "train_s": [w["train"] for w in res["wall_time_s"]], "eval_s": [w["eval"] for w in res["wall_time_s"]],
           "loss": [round(float(x.get("loss", float("nan"))), 5) for x in res["train_logs"]],
           "average_accuracy": round(res["metrics"]["average_accuracy"], 3),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2), "compile": res["provenance"]["compile"]}
    if mode == "on":
        row["dynamo"] = dynamo_stats()
    return row


def main(out: str, profiles: list[str]) -> int:
    """Run the plans named in ``profiles`` (``NAME`` or ``NAME:method,method``), adding them to ``out`` when it
    exists (a pair replaces the same plan's pair of the same method) and rewriting it after every pair."""
    rec = {"schema": "cl-peft-compile-check/1", "provenance": provenance(torch.device("cuda")), "profiles": {}}
    if Path(out).exists():
        old = json.loads(Path(out).read_text())
        rec["profiles"] = old["profiles"]
        rec["provenance_runs"] = old.get("provenance_runs", [old["provenance"]]) + [rec["provenance"]]
    with tempfile.TemporaryDirectory() as tmp:
        n = max(get_profile("colab").train_per_class, 500)
        write_cifar100(Path(tmp) / "data", {"train": [c for c in range(100) for _ in range(n)],
                                            "test": [c for c in range(100) for _ in range(100)]})
        os.environ["CL_PEFT_DATA"] = str(Path(tmp) / "data")
        for spec in profiles:
            name, _, only = spec.partition(":")
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(tmp) / f"inductor-{name}")  # cold cache per profile
            os.environ["CL_PEFT_AMP"] = AMP.get(name, "auto")
            rows = rec["profiles"].setdefault(name, [])
            for profile, benchmark, method, opts in PLAN[name]:
                if only and method not in only.split(","):
                    continue
                pair = {"profile": profile, "benchmark": benchmark, "method": method, "options": opts}
                for mode in ("off", "on"):
                    try:
                        pair[mode] = one_run(profile, benchmark, method, opts, mode)
                    except Exception as e:  # noqa: BLE001 - recorded, the others still run
                        pair[mode] = {"mode": mode, "error": f"{type(e).__name__}: {e}"}
                pair["amp"] = os.environ["CL_PEFT_AMP"]
                rows[:] = [r for r in rows if r["method"] != method or r["benchmark"] != benchmark] + [pair]
                print(json.dumps(pair), flush=True)
                Path(out).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:] or list(PLAN)))
