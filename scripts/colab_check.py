"""Check the Colab estimate (``cl_peft_lib/colab.py``) against runs measured on a GPU, on the ``colab`` profile.

Chapter 1's runs (sequential fine-tuning and joint training, seeds 0-2) and chapter 3's class-incremental ones
(one shared prompt, L2P, DualPrompt, seed 0) on Split CIFAR-100 through the paper loader: fabricated images
in the official pickle format (no download; speed does not depend on the pixels), exactly the profile's cut
per class, and a randomly initialised ViT-B/16 (the reference weights cannot be downloaded there), under
``CL_PEFT_AMP=fp16`` as on a T4. Each run's measured time (its per-task train and evaluation times) is set beside
:func:`cl_peft_lib.colab.run_h200_seconds` of the same run.

Usage (on the GPU machine)::

    CL_PEFT_AMP=fp16 python scripts/colab_check.py OUT.json

Chapter: ``book/appendix_paper_track.md`` ("A free Colab T4").
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from cl_peft_lib import colab
from cl_peft_lib.data.fabricate import write_cifar100
from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.profiles import get_profile
from cl_peft_lib.records import record_path
from cl_peft_lib.utils import provenance

RUNS = [("finetune", s, {}) for s in (0, 1, 2)] + [("joint", s, {}) for s in (0, 1, 2)] + [
    ("l2p", 0, {"pool_size": 1, "top_n": 1, "batchwise": False}), ("l2p", 0, {}), ("dualprompt", 0, {})]
BACKBONE = "random_vit_base_patch16_224"  # cl_peft_lib.backbones: the paper ViT-B/16, random weights


def main(out: str) -> int:
    import os

    prof = get_profile("colab")
    fp16 = json.loads(record_path("bench_h200_fp16.json").read_text())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar100(Path(tmp) / "data", {"train": [c for c in range(100) for _ in range(prof.train_per_class)],
                                            "test": [c for c in range(100) for _ in range(prof.test_per_class)]})
        os.environ["CL_PEFT_DATA"] = str(Path(tmp) / "data")
        for method, seed, opts in RUNS:
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            res = run_continual(RunConfig(method, "split-cifar100", "colab", seed=seed, device="cuda",
                                          backbone=BACKBONE, method_options=opts, progress=False, out_dir=None))
            wall = time.perf_counter() - t0
            measured = sum(w["train"] + w["eval"] for w in res["wall_time_s"])
            est = colab.run_h200_seconds(colab.Run(method, "split-cifar100"), prof, fp16)
            rows.append({"method": method, "seed": seed, "options": opts, "measured_s": round(measured, 2),
                         "wall_s": round(wall, 2), "estimated_s": round(est, 2), "ratio": round(measured / est, 3),
                         "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)})
            print(json.dumps(rows[-1]), flush=True)
    rec = {"schema": "cl-peft-colab-check/1", "profile": "colab", "benchmark": "split-cifar100",
           "backbone": BACKBONE, "provenance": provenance(torch.device("cuda")), "runs": rows}
    Path(out).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
