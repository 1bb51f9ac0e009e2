#!/usr/bin/env python
"""Speed benchmarks of every continual-learning method (issue 7), from one command.

    python benchmarks/bench.py --mode gpu --out benchmarks/results_h200.json [--compile]
    python benchmarks/bench.py --mode cpu --out benchmarks/results_cpu.json
    python benchmarks/bench.py --mode gpu --skip-micro --e2e l2p,slora --append --out benchmarks/results_h200.json
    python benchmarks/bench.py --show benchmarks/results_h200.json --markdown

A thin entry point: the suite is the package ``benchmarks/clbench`` (see its docstring and
``benchmarks/README.md`` for what every number means).
"""
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if "cpu" in sys.argv[1:]:
    # On a shared CPU, OpenMP threads that spin-wait at every barrier lose their time slices to other
    # processes: a micro-ViT matmul took 12 ms instead of 0.5 ms with 2 threads here. Passive waiting
    # must be set before torch loads OpenMP (README: "CPU mode").
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
for p in (str(HERE.parent), str(HERE)):  # this checkout's cl_peft_lib (before an installed one), and clbench
    if p not in sys.path:
        sys.path.insert(0, p)

from clbench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
