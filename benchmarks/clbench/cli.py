"""The command line of ``python benchmarks/bench.py``: flags -> :class:`~.settings.Settings` -> a run or ``--show``.

Chapter: ``notebooks/07_efficiency.ipynb`` (its JSON comes from these commands).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from cl_peft_lib.bench_report import format_markdown, format_table
from cl_peft_lib.grid import parse_list
from cl_peft_lib.methods import METHODS

from .run import run_benchmark
from .settings import ISSUE_METHODS, Settings, preset

DESCRIPTION = "Speed benchmarks of every continual-learning method (issue 7), from one command."


def parse_args(argv=None) -> tuple[Settings | None, argparse.Namespace]:
    """The flags of ``benchmarks/bench.py`` (``--help``); ``(None, args)`` for ``--show``."""
    ap = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--show", metavar="JSON", default=None, help="print the table of an existing results file and exit")
    ap.add_argument("--markdown", action="store_true", help="with --show: a Markdown table")
    ap.add_argument("--mode", choices=["gpu", "cpu"], default=None, help="gpu: paper scale (ViT-B/16, 224 px, bf16); "
                    "cpu: offline-track scale (ViT-Tiny p4, 32 px, 2 threads)")
    ap.add_argument("--out", default=None, help="results JSON (written after every config)")
    ap.add_argument("--append", action="store_true", help="update an existing --out JSON (e.g. add --e2e runs)")
    ap.add_argument("--methods", default=None, help="comma list, or 'all' (every registered method); "
                    f"default: {','.join(ISSUE_METHODS)}")
    ap.add_argument("--batch-sizes", default=None, help="comma list (gpu: 256,128; cpu: 64)")
    ap.add_argument("--backbone", default=None, help="backbone registry name, always built with random weights "
                    "(default: ViT-B/16 on gpu, the offline profile's backbone on cpu)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None, help="timed steps per repeat")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (the median is reported)")
    ap.add_argument("--no-references", action="store_true", help="skip the naive timm/peft references")
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile'd variants (regional: every ViT block)")
    ap.add_argument("--compile-only", action="store_true", help="only the compiled variants (no references, eager "
                    "or fused configs; use with --append to add them to an earlier run's JSON)")
    ap.add_argument("--compile-methods", default=None, help="methods measured compiled (default finetune,lora,l2p)")
    ap.add_argument("--fused-methods", default=None, help="methods also measured with fused=True optimizer "
                    "(default finetune; '' for none)")
    ap.add_argument("--infer-all-tasks", action=argparse.BooleanOptionalAction, default=None,
                    help="also time the S-methods' predict after all domains (mixed routing; default: on for gpu)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (cpu default 2)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new micro configs after this many seconds "
                    "(gpu default 230; 0: no budget)")
    ap.add_argument("--skip-micro", action="store_true", help="only the --e2e runs")
    ap.add_argument("--e2e", default="", help="methods for the end-to-end Split-CIFAR-100-shaped run (comma list)")
    ap.add_argument("--e2e-epochs", type=int, default=5)
    ap.add_argument("--e2e-tasks", type=int, default=10)
    ap.add_argument("--e2e-train", type=int, default=50_000, help="training images (all tasks)")
    ap.add_argument("--e2e-test", type=int, default=10_000, help="test images (all tasks)")
    ap.add_argument("--e2e-classes", type=int, default=100, help="classes (Split CIFAR-100: 100)")
    ap.add_argument("--e2e-batch", type=int, default=128, help="training batch (0: each method's own default)")
    ap.add_argument("--trace", default="", help="profiler traces of these methods' training step at the largest batch "
                    "size (eager, and compiled with --compile), stored under 'traces' and read into the missed "
                    "training targets (e.g. finetune,lora; with --skip-micro --append: traces only)")
    ap.add_argument("--trace-steps", type=int, default=8, help="profiled steps per trace")
    a = ap.parse_args(argv)
    if a.show:
        return None, a
    if a.mode is None:
        ap.error("--mode gpu|cpu is required (or --show JSON)")
    s = preset(a.mode)
    if a.methods:
        s.methods = sorted(set(METHODS) | set(ISSUE_METHODS), key=lambda n: (n not in ISSUE_METHODS, n)) \
            if a.methods == "all" else parse_list(a.methods)
    if a.batch_sizes:
        s.batch_sizes = [int(b) for b in parse_list(a.batch_sizes)]
    if a.backbone:
        s.backbone = a.backbone
    for k in ("warmup", "steps", "repeats", "threads"):
        if getattr(a, k) is not None:
            setattr(s, k, getattr(a, k))
    if a.budget_s is not None:
        s.budget_s = a.budget_s or None
    s.references = not a.no_references
    s.compile = a.compile or a.compile_only
    s.compile_only = a.compile_only
    if a.compile_methods is not None:
        s.compile_methods = parse_list(a.compile_methods)
    if a.fused_methods is not None:
        s.fused_methods = parse_list(a.fused_methods)
    if a.infer_all_tasks is not None:
        s.infer_all_tasks = a.infer_all_tasks
    s.skip_micro = a.skip_micro
    s.trace, s.trace_steps = parse_list(a.trace), a.trace_steps
    unknown = [n for n in s.trace if n not in METHODS]
    if unknown:
        ap.error(f"--trace: unknown method(s) {', '.join(unknown)}; valid: {', '.join(sorted(METHODS))}")
    s.e2e = parse_list(a.e2e)
    s.e2e_epochs, s.e2e_tasks, s.e2e_train, s.e2e_test, s.e2e_batch, s.e2e_classes = (
        a.e2e_epochs, a.e2e_tasks, a.e2e_train, a.e2e_test, a.e2e_batch, a.e2e_classes)
    if s.e2e and (min(s.e2e_train, s.e2e_test) < s.e2e_classes or s.e2e_classes % s.e2e_tasks):
        ap.error(f"--e2e needs at least one train and test image per class ({s.e2e_classes} classes) and "
                 f"classes divisible by --e2e-tasks")
    return s, a


def main(argv=None) -> int:
    """Run the benchmark (or print ``--show FILE``); prints the text table, returns the exit status."""
    s, a = parse_args(argv)
    if a.show:
        res = json.loads(Path(a.show).read_text())
        print(format_markdown(res) if a.markdown else format_table(res))
        return 0
    prior = None
    if a.append and a.out and Path(a.out).exists():
        prior = json.loads(Path(a.out).read_text())
    res = run_benchmark(s, a.out, append_to=prior)
    print(format_table(res), flush=True)
    if a.out:
        print(f"results: {a.out}")
    return 0
