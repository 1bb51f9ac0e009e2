"""Results files that travel with the library (package data), so that a chapter can load them instead of
training, also from a ``pip install`` without the repository (Colab):

* ``offline_protocol.json``: the offline track's comparison protocol (selections + every head-to-head run),
  made on the H200 with ``cl-peft protocol --profile offline`` and written by ``cl-peft protocol --export``;
  ``cl-peft protocol --import`` (:func:`cl_peft_lib.protocol.import_bundle`) puts it in a run store.
* ``bench_h200.json``, ``bench_cpu.json``: byte-for-byte copies of the benchmark suite's results,
  ``benchmarks/results_h200.json`` (``benchmarks/bench.py --mode gpu``, ViT-B/16 on one H200) and
  ``benchmarks/results_cpu.json`` (``--mode cpu``, the offline ViT); copy them here after a new benchmark
  run (``tests/test_records.py`` fails until the copies equal the originals).
* ``bench_h200_fp16.json``: the same for ``benchmarks/results_h200_fp16.json``, the suite under
  ``CL_PEFT_AMP=fp16`` (the T4's path), which the appendix's fp16 table reads
  (:func:`cl_peft_lib.bench_report.fp16_markdown`).
* ``compile_check.json``: whole runs through the loop on the H200, eager and with regional ``torch.compile``
  (``scripts/compile_check.py``), from which :data:`cl_peft_lib.compiling.PAYS_PROFILES` is decided
  (:func:`cl_peft_lib.compiling.measured_verdicts`; chapter 7, "Compiled, in the loop?").

Chapters: ``notebooks/05_head_to_head.ipynb``, ``notebooks/07_efficiency.ipynb`` (the benchmark tables),
``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path


def record_path(name: str) -> Path:
    """Path of the packaged results file ``name`` (e.g. ``"offline_protocol.json"``).

    Raises:
        FileNotFoundError: no such file; the message lists the ones there are.
    """
    root = resources.files(__name__)
    p = root / name
    if not p.is_file():
        have = sorted(x.name for x in root.iterdir() if x.name.endswith(".json"))
        raise FileNotFoundError(f"no packaged results file '{name}'; there are: {', '.join(have)}")
    return Path(str(p))
