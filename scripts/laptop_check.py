#!/usr/bin/env python
"""Do the offline track's conclusions survive the ``laptop`` profile? The paper's two swaps on a CPU.

Runs L2P and L2L on ``offline-cil`` and S-Prompts and S-LoRA on ``offline-dil`` under the ``laptop`` profile
(cl_peft_lib.profiles), each at the offline protocol's tuned selection (the packaged bundle), on seeds 0-2, in
one grid slot on the CPU, and writes the per-seed results with their wall times to
``cl_peft_lib/records/laptop_pairs.json``. ``tests/test_records.py`` checks that the paired differences there
have the sign of the offline track's (the README's laptop paragraph rests on it).

Usage::

    CL_PEFT_DEVICE=cpu python scripts/laptop_check.py [--root /tmp/laptop-runs] [--seeds 0,1,2]

Chapter: README ("A laptop without a GPU").
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cl_peft_lib.grid import Cell, run_cells  # noqa: E402
from cl_peft_lib.protocol import PAIRS  # noqa: E402
from cl_peft_lib.records import record_path  # noqa: E402
from cl_peft_lib.tuning import options_of  # noqa: E402
from cl_peft_lib.utils import atomic_write_json  # noqa: E402

SCHEMA = "cl-peft-laptop-check/1"
BENCH = {"l2p": "offline-cil", "l2l": "offline-cil", "sprompts": "offline-dil", "slora": "offline-dil"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/laptop-runs", help="run store for these runs")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default=str(ROOT / "cl_peft_lib" / "records" / "laptop_pairs.json"))
    a = ap.parse_args(argv)
    bundle = json.loads(record_path("offline_protocol.json").read_text())
    seeds = [int(s) for s in a.seeds.split(",")]
    cells = [Cell(m, BENCH[m], s, options_of(bundle["selections"][BENCH[m]][m]))
             for pair in PAIRS for s in seeds for m in pair]
    g = run_cells(cells, "laptop", a.root, workers=1)
    runs = []
    for r in g["runs"]:
        if r["status"] != "complete":
            print(f"laptop_check: {r['method']} seed {r['seed']} did not finish: {r['error']}", file=sys.stderr)
            return 1
        res = json.loads((Path(r["out"]) / "results.json").read_text())
        runs.append({"method": r["method"], "benchmark": r["benchmark"], "seed": r["seed"], "options": r["options"],
                     "average_accuracy": res["metrics"]["average_accuracy"],
                     "wall_s": round(sum(t["train"] + t["eval"] for t in res["wall_time_s"]), 1)})
    atomic_write_json(a.out, {"schema": SCHEMA, "profile": "laptop", "cpu": platform.processor() or platform.machine(),
                              "cpu_count": os.cpu_count(), "threads": int(os.environ.get("OMP_NUM_THREADS", 0) or 0)
                              or os.cpu_count(),
                              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "runs": runs})
    print(f"wrote {a.out}: {len(runs)} runs in {g['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
