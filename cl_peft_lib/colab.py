"""The paper track on a free Colab T4: what each chapter trains, and how long it takes there (issue 16).

A T4 could not be measured here, so its time is **estimated from measured H200 runs**: the benchmark suite's
fp16 run (``CL_PEFT_AMP=fp16``, the T4's path: ``cl_peft_lib/records/bench_h200_fp16.json``) gives every
method's training and ``predict`` throughput at paper scale (ViT-B/16, 224 px, batch 128) and the H200's fp16
matrix-product ceiling measured in the same runs. The T4 is taken to be slower by

    factor = max(measured H200 fp16 ceiling / T4 fp16 tensor peak (65 TFLOP/s, NVIDIA's T4 datasheet),
                 H200 / T4 memory bandwidth (4.8 TB/s / 320 GB/s, both datasheets)),

15x with the measured ceilings (the compute ratio alone is 11-12x): about half of the training step's GPU
time is memory-bound kernels in the profiler traces (``benchmarks/results_h200.json``), which feel the
bandwidth ratio. A T4 rarely reaches its datasheet peaks, and decoding CORe50's image files on Colab's two
CPU cores is not counted: read the table as a lower bound of a T4's time.

A run's H200 time is counted image by image through the loop (:meth:`cl_peft_lib.loop.Runner.run`): each
epoch's training images (the union of tasks so far for cumulative methods) at the method's training rate,
the passes over a task's training data that ``begin_task``/``end_task`` make (prototypes, k-means, subspace
memories) and every evaluation after each task plus the final validation pass at its ``predict`` rate.
Peak memory is the method's measured peak of the training step (fp16, batch 128). A GPU check
(``scripts/colab_check.py``: chapter 1's and 3's runs on the profile, through the real CIFAR-100 loader)
measures what the loop spends beyond this count; the table's H200 seconds are scaled by its median ratio.

The chapters' runs (:data:`CHAPTER_RUNS`) are the chapters' own lists under the paper track (a test reads
them back from the notebooks' code); chapter 5's are the protocol's (:mod:`cl_peft_lib.protocol`).

Chapter: ``book/appendix_paper_track.md`` ("A free Colab T4").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .profiles import Profile, get_profile

#: NVIDIA T4 datasheet: 65 TFLOP/s mixed-precision (fp16) tensor peak.
T4_FP16_TFLOPS = 65.0
#: H200 / T4 memory bandwidth, datasheets: 4.8 TB/s / 320 GB/s.
BANDWIDTH_RATIO = 4800 / 320
#: The targets of issue 16: a chapter in 20 min on a T4, at most 13 GiB of GPU memory (Colab shows 15 GiB of its 16 GB).
CHAPTER_MINUTES = 20.0
PEAK_GIB = 13.0


@dataclass(frozen=True)
class Shape:
    """What a benchmark holds per class (the published splits), without loading it."""

    classes: int
    tasks: int
    train_per_class: float  # per task (domain-incremental: per class and domain; an average where it varies)
    test_per_class: float
    shared_test: bool = False  # every domain is tested on one shared set (CORe50's sessions 3, 7, 10)


#: CIFAR-100: 500/100 images per class; CORe50 (S-Prompts protocol): ~300 frames per object and session,
#: 8 training sessions, 3 test sessions shared; DomainNet: 409,832 train / 176,743 test images over
#: 345 classes x 6 domains (averages per class and domain).
SHAPES: dict[str, Shape] = {
    "split-cifar100": Shape(100, 10, 500, 100),
    "split-tinyimagenet": Shape(200, 10, 500, 50),
    "core50": Shape(50, 8, 300, 900, shared_test=True),
    "domainnet": Shape(345, 6, 409_832 / 2070, 176_743 / 2070),
}
#: What a chapter does on Colab instead of training (``CL_PEFT_MODE=auto`` under ``colab``).
LOADS = {"05_head_to_head": "loads the packaged results"}
#: Passes over a task's training images at ``predict`` speed made by ``begin_task``/``end_task``.
EXTRA_PASSES = {"ncm": 1, "ranpac": 1, "sprompts": 1, "slora": 1, "inflora": 2}


@dataclass(frozen=True)
class Run:
    """Runs a chapter makes: ``method`` on ``benchmark`` for ``seeds`` seeds, ``epochs`` None: the default."""

    method: str
    benchmark: str
    seeds: int = 1
    epochs: int | None = None
    note: str = ""


#: The domain-incremental benchmark of chapter 2 per paper-track profile (DomainNet's 345 classes x 6 domains
#: do not fit a T4's 20 minutes; the notebook's parameter cell makes the same choice).
CH2_DIL = {"paper": "domainnet", "colab": "core50"}


def chapter_runs(profile: str = "colab") -> dict[str, list[Run]]:
    """Each training chapter's runs under a paper-track ``profile`` (the notebooks' lists, with the cuts of
    :data:`COLAB_CUTS` under ``colab``; tests/test_colab.py reads them back from the notebooks' code)."""
    chapters = {**CHAPTER_RUNS, **(COLAB_CUTS if profile == "colab" else {})}
    return {k: [Run(r.method, CH2_DIL[profile] if r.benchmark == "<dil>" else r.benchmark, r.seeds, r.epochs, r.note)
                for r in v] for k, v in chapters.items()}


#: Each training chapter's runs under the paper track (``<dil>``: :data:`CH2_DIL`).
CHAPTER_RUNS: dict[str, list[Run]] = {
    "01_continual_learning": [Run("finetune", "split-cifar100", 3), Run("joint", "split-cifar100", 3)],
    "02_pretrained_backbone": [Run(m, b, 3) for m in ("ncm", "linear_probe") for b in ("split-cifar100", "<dil>")],
    "03_prompt_tuning": [Run("l2p", "split-cifar100", note="one shared prompt"), Run("l2p", "split-cifar100"),
                         Run("dualprompt", "split-cifar100"), Run("sprompts", "core50")],
    # L2P and S-Prompts are chapter 3's runs, reused from the run store
    "04_lora": [Run("lora", "split-cifar100"), Run("l2l", "split-cifar100"), Run("slora", "core50")],
    # 30 matched-budget runs (5 seeds x L2P Lp 4/8/16 and L2L rank 1/2/4), 15 sensitivity runs (L2L, tuning
    # seed), 12 S-X runs (3 seeds x 2 methods x per-domain / shared classifier)
    "06_ablations": [Run("l2p", "split-cifar100", 15), Run("l2l", "split-cifar100", 15 + 15),
                     Run("sprompts", "core50", 6), Run("slora", "core50", 6)],
}
#: Chapters whose lists the ``colab`` profile cuts (the notebook's parameter cell makes the same cut): chapter 6
#: keeps 8 matched-budget runs (2 seeds x Lp 4/8 x L2P/L2L) and 2 sensitivity runs (L2L at 2 rates, block 0) and
#: drops the S-X ablations, whose CoRE50 runs alone would take a T4 past 20 minutes.
COLAB_CUTS: dict[str, list[Run]] = {
    "06_ablations": [Run("l2p", "split-cifar100", 4), Run("l2l", "split-cifar100", 4 + 2)],
}


def protocol_runs(profile: str = "paper") -> list[Run]:
    """Chapter 5's runs under ``profile``'s protocol: tuning (budget x tuning seeds per method with a space),
    the tuned head-to-head and the reference-defaults view (5 seeds each)."""
    from . import protocol
    from .tuning import TUNE_SEEDS

    s = protocol.SETTINGS[profile]
    out = [Run(m, b, s["budget"] * len(TUNE_SEEDS), note="tuning") for b, ms in protocol.tuning_plan(profile).items()
           for m in ms]
    out += [Run(m, b, len(s["seeds"]), note="head to head") for b, ms in protocol.plan(profile).items() for m in ms]
    out += [Run(m, b, len(s["seeds"]), note="defaults view") for b, ms in protocol.defaults_plan(profile).items()
            for m in ms]
    return out


def t4_factor(fp16: dict) -> tuple[float, float]:
    """``(factor, H200 fp16 ceiling in TFLOP/s)``: the larger of the compute ratio (the highest fp16 ceiling the
    runs measured over the T4's peak) and the memory-bandwidth ratio of the datasheets (:data:`BANDWIDTH_RATIO`)."""
    ceilings = [c for c in (fp16.get("ceiling_runs") or [(fp16.get("ceiling") or {}).get("tflops")]) if c]
    ceiling = max(ceilings)
    return max(ceiling / T4_FP16_TFLOPS, BANDWIDTH_RATIO), ceiling


def loop_overhead(check: dict | None = None) -> float:
    """The median ratio of measured to estimated H200 time over the GPU check's runs
    (``cl_peft_lib/records/colab_check.json``, ``scripts/colab_check.py``): what the loop spends beyond the
    benchmark's steps (data preparation, small last batches, evaluation bookkeeping). 1.0 without a check."""
    import statistics

    if check is None:
        try:
            check = _record("colab_check.json")
        except FileNotFoundError:
            return 1.0
    return float(statistics.median(r["measured_s"] / r["estimated_s"] for r in check["runs"]))


def _record(name: str) -> dict:
    from .records import record_path

    return json.loads(record_path(name).read_text())


def _rates(fp16: dict) -> dict[str, dict[str, Any]]:
    return {c["method"]: c for c in fp16["configs"] if c.get("status") == "ok"}


def _epochs(run: Run, prof: Profile) -> int:
    from .methods import get_method_class

    if run.epochs is not None:
        return run.epochs
    if prof.epochs is not None:
        return prof.epochs
    cfg = get_method_class(run.method).config_cls()
    return prof.method_options(run.method, run.benchmark).get("epochs", cfg.epochs)


def run_h200_seconds(run: Run, prof: Profile, fp16: dict) -> float:
    """H200 seconds of one seed of ``run`` under ``prof`` (module docstring: image by image through the loop)."""
    from .methods import get_method_class
    from .protocol import DOMAIN_BENCHMARKS

    sh, r = SHAPES[run.benchmark], _rates(fp16)[run.method]
    n_tr = min(prof.train_per_class or math.inf, sh.train_per_class)
    n_te = min(prof.test_per_class or math.inf, sh.test_per_class)
    per_task = sh.classes if run.benchmark in DOMAIN_BENCHMARKS else sh.classes / sh.tasks  # (a domain: all classes)
    train = n_tr * per_task * (1 - prof.val_fraction)
    val = n_tr * per_task * prof.val_fraction
    test = n_te * (sh.classes if sh.shared_test else per_task)
    cumulative = getattr(get_method_class(run.method), "cumulative", False)
    T, ep = sh.tasks, _epochs(run, prof)
    train_imgs = ep * train * (T * (T + 1) / 2 if cumulative else T)
    infer_imgs = EXTRA_PASSES.get(run.method, 0) * train * T + test * T * (T + 1) / 2 + val * T
    t_train = train_imgs / r["train_img_s"] if r.get("train_img_s") else 0.0
    return t_train + infer_imgs / r["infer_img_s"]["inference_mode"]


def chapter_estimates(profile: str = "colab", fp16: dict | None = None) -> list[dict[str, Any]]:
    """Per training chapter (and chapter 5's protocol): runs, estimated T4 minutes, peak GiB, and whether it
    meets the targets (:data:`CHAPTER_MINUTES`, :data:`PEAK_GIB`)."""
    fp16 = fp16 or _record("bench_h200_fp16.json")
    prof = get_profile(profile)
    factor, _ = t4_factor(fp16)
    overhead = loop_overhead()
    rates = _rates(fp16)
    chapters = chapter_runs(profile)
    chapters["05_head_to_head"] = protocol_runs("paper")
    out = []
    for ch in sorted(chapters):
        runs = chapters[ch]
        h200 = sum(run_h200_seconds(r, prof, fp16) * r.seeds for r in runs) * overhead
        peak = max((rates[r.method].get("peak_mem_train_gib") or rates[r.method].get("peak_mem_infer_gib") or 0)
                   for r in runs)
        t4_min = h200 * factor / 60
        out.append({"chapter": ch, "runs": sum(r.seeds for r in runs), "h200_s": round(h200, 1),
                    "t4_min": round(t4_min, 1), "peak_gib": round(peak, 2),
                    "meets": t4_min <= CHAPTER_MINUTES and peak <= PEAK_GIB})
    return out


def markdown_table(profile: str = "colab", fp16: dict | None = None) -> str:
    """The appendix's Colab table (generated; ``tests/test_colab.py`` checks the appendix holds it)."""
    fp16 = fp16 or _record("bench_h200_fp16.json")
    factor, ceiling = t4_factor(fp16)
    p = get_profile(profile)
    rows = ["| chapter | on Colab | runs | H200 estimate (s) | T4 estimate (min) | peak GPU memory (GiB) | "
            "within 20 min and 13 GiB |", "|---|---|---:|---:|---:|---:|---|"]
    for e in chapter_estimates(profile, fp16):
        does = LOADS.get(e["chapter"], "trains")
        rows.append(f"| {e['chapter']} | {does} | {e['runs']} | {e['h200_s']:,.0f} | {e['t4_min']:,.1f} | "
                    f"{e['peak_gib']:.1f} | {'yes' if e['meets'] else 'no'} |")
    return ("\n".join(rows) + f"\n\nProfile `{profile}`: {p.train_per_class} training and {p.test_per_class} test images "
            f"per class and task, {p.epochs} epoch, batch {p.batch_size}. Rates: `cl_peft_lib/records/bench_h200_fp16.json` "
            f"(fp16, batch 128, 224 px). T4 factor {factor:.1f}: the larger of the compute ratio "
            f"{ceiling / T4_FP16_TFLOPS:.1f} (H200 fp16 ceiling {ceiling:.0f} TFLOP/s, measured, over the T4's "
            f"{T4_FP16_TFLOPS:.0f}, datasheet) and the datasheets' bandwidth ratio {BANDWIDTH_RATIO:.1f}. "
            + check_sentence() + " Chapters 7 and 8 train nothing.")


def check_sentence(check: dict | None = None) -> str:
    """How the GPU check's measured runs compare with the estimate (the table's H200 seconds include the
    median ratio, :func:`loop_overhead`)."""
    check = check or _record("colab_check.json")
    ratios = [r["measured_s"] / r["estimated_s"] for r in check["runs"]]
    p = check["provenance"]
    return (f"Checked on {p['device']} ({p['date']}, `scripts/colab_check.py`): {len(ratios)} runs of chapters 1 and 3 "
            f"on the colab profile took {min(ratios):.2f}-{max(ratios):.2f}x the benchmark-based estimate (median "
            f"{loop_overhead(check):.2f}, by which the H200 column is scaled); their peak memory was "
            f"{max(r['peak_gib'] for r in check['runs']):.1f} GiB.")


def chapter_line(chapter: str, profile: str = "colab") -> str:
    """The sentence a chapter's banner prints under ``profile``: its estimated T4 time and peak memory
    (``""`` for a chapter that trains nothing)."""
    est = {e["chapter"]: e for e in chapter_estimates(profile)}.get(chapter)
    if est is None:
        return ""
    fits = "within" if est["meets"] else "over"
    return (f"Estimated on a free Colab T4: {est['t4_min']:.0f} min for its {est['runs']} runs, peak GPU memory "
            f"{est['peak_gib']:.1f} GiB ({fits} the {CHAPTER_MINUTES:.0f}-minute, {PEAK_GIB:.0f}-GiB target; a lower "
            "bound, from measured H200 runs: the appendix's 'A free Colab T4').")
