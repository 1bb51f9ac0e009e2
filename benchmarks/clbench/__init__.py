"""The benchmark suite of ``cl_peft_lib`` (issue 7) as a package; ``benchmarks/bench.py`` is its command line.

It is a client of the loop: every method is built by :class:`cl_peft_lib.loop.Runner`, the timed
training step is :func:`cl_peft_lib.loop.train_step` (the step of ``Runner.train_task``), ``end_task``
gets ``Runner.context``, and the end-to-end mode runs a ``Runner`` subclass that times
``model_batches``. The report (text and Markdown tables) lives in :mod:`cl_peft_lib.bench_report`.

Modules: :mod:`.settings` (settings, presets, backbones), :mod:`.measure` (timing, memory,
ceiling), :mod:`.flops` (FLOP counting), :mod:`.variants` (fused, compiled, merged),
:mod:`.micro` (per-method micro-benchmark), :mod:`.references` (naive timm/peft references),
:mod:`.e2e` (end to end), :mod:`.targets` (issue 7's targets), :mod:`.core` (the state of a run),
:mod:`.run` (its driver), :mod:`.cli` (the flags).

Chapter: ``notebooks/07_efficiency.ipynb``.
"""
from cl_peft_lib.bench_report import format_markdown, format_table

from .cli import main, parse_args
from .core import Bench
from .run import run_benchmark
from .settings import GPU_BACKBONE, ISSUE_METHODS, REFERENCES, SCHEMA, SHAPES, Settings, preset
from .targets import compute_targets

__all__ = ["Bench", "GPU_BACKBONE", "ISSUE_METHODS", "REFERENCES", "SCHEMA", "SHAPES", "Settings", "compute_targets",
           "format_markdown", "format_table", "main", "parse_args", "preset", "run_benchmark"]
