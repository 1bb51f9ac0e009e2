#!/usr/bin/env python
"""Execute the book's notebooks in place, storing widget state.

The committed outputs of ``notebooks/*.ipynb`` are the book's content (the
Jupyter Book build itself never executes code). This script produces them:

    python scripts/execute_notebooks.py                       # all chapters, smoke profile, cpu
    python scripts/execute_notebooks.py --profile offline --device cuda notebooks/05_head_to_head.ipynb
    make execute PROFILE=offline DEVICE=cuda

Each notebook runs with the working directory ``notebooks/`` and with the
environment variables ``CL_PEFT_PROFILE`` and ``CL_PEFT_DEVICE`` set from
``--profile`` / ``--device`` (the notebooks read them in their ``parameters``
cell). Widget state is stored in the notebook metadata so the kernel-free
explorers of ``cl_peft_lib.widgets`` work in the static book, and the kernels
draw with IPython's inline matplotlib backend so that every static figure is
stored as an ``image/png`` output (``MPLBACKEND=Agg`` would store none). The
notebook metadata key ``cl_peft_execution`` records the backend, profile and
device the outputs were produced with.

A failing notebook is saved with the outputs it produced up to the error
(so the traceback can be inspected), the others are still executed and saved,
and the script exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO / "notebooks"
PROFILES = ("smoke", "offline", "laptop", "colab", "paper")
#: matplotlib backend of the kernels: IPython's inline backend, which stores figures as image/png
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
#: notebook metadata key recording how the outputs were produced (tests/test_notebooks.py reads it)
EXECUTION_KEY = "cl_peft_execution"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "notebooks",
        nargs="*",
        type=Path,
        help="notebooks to execute (default: every notebooks/*.ipynb, sorted)",
    )
    p.add_argument(
        "--profile",
        default=os.environ.get("CL_PEFT_PROFILE", "smoke"),
        choices=PROFILES,
        help="value of CL_PEFT_PROFILE for the kernels (default: $CL_PEFT_PROFILE or smoke)",
    )
    p.add_argument(
        "--device",
        default=os.environ.get("CL_PEFT_DEVICE", "cpu"),
        help="value of CL_PEFT_DEVICE for the kernels, e.g. cpu, cuda, cuda:1 "
        "(default: $CL_PEFT_DEVICE or cpu)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=3600,
        help="per-cell timeout in seconds (default: 3600; -1 for none)",
    )
    p.add_argument(
        "--times",
        type=Path,
        default=None,
        metavar="FILE",
        help="also record each notebook's wall time in FILE (JSON; entries of other notebooks are kept), "
        "e.g. cl_peft_lib/records/laptop_chapters.json",
    )
    p.add_argument(
        "--kernel",
        default="python3",
        help="Jupyter kernel name (default: python3, i.e. this interpreter's ipykernel)",
    )
    return p.parse_args(argv)


TIMES_SCHEMA = "cl-peft-chapter-times/1"


def record_times(path: Path, results: list[tuple[str, float, str]], profile: str, device: str) -> None:
    """Merge ``(notebook, seconds, status)`` into the JSON record at ``path``: per notebook its latest wall time,
    with the profile, device and machine (CPU count, processor) it was measured on."""
    import datetime as _dt
    import json
    import platform

    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        rec = {}
    if rec.get("schema") != TIMES_SCHEMA or rec.get("profile") != profile:
        rec = {"schema": TIMES_SCHEMA, "profile": profile, "chapters": {}}
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for rel, elapsed, status in results:
        rec["chapters"][Path(rel).stem] = {"wall_s": round(elapsed, 1), "status": status, "device": device,
                                           "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                                           "date": when}
    rec["chapters"] = dict(sorted(rec["chapters"].items()))
    path.write_text(json.dumps(rec, indent=1) + "\n")


def execute_one(path: Path, timeout: int, kernel: str) -> None:
    """Execute one notebook in place.

    The notebook is written back even when a cell fails; the exception is
    re-raised after saving.
    """
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=None if timeout < 0 else timeout,
        kernel_name=kernel,
        store_widget_state=True,
        resources={"metadata": {"path": str(path.parent)}},
    )
    # recorded before running, so a notebook saved after a failing cell carries it as well
    nb.metadata[EXECUTION_KEY] = {
        "script": "scripts/execute_notebooks.py",
        "mpl_backend": os.environ.get("MPLBACKEND", ""),
        "store_widget_state": True,
        "profile": os.environ.get("CL_PEFT_PROFILE", ""),
        "device": os.environ.get("CL_PEFT_DEVICE", ""),
    }
    try:
        client.execute()
    finally:
        nbformat.write(nb, path)


def main(argv: list[str] | None = None) -> int:
    """Run the notebooks; return the process exit status."""
    args = parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(NOTEBOOK_DIR.glob("*.ipynb"))
    if not paths:
        print(f"no notebooks found in {NOTEBOOK_DIR}", file=sys.stderr)
        return 1
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2

    # Environment inherited by the kernels.
    os.environ["CL_PEFT_PROFILE"] = args.profile
    os.environ["CL_PEFT_DEVICE"] = args.device
    # Make `import cl_peft_lib` work from notebooks/ even without `pip install -e .`.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    )
    # Figures must reach the notebook as image/png outputs: the kernels use IPython's inline
    # backend (ipykernel's own default). Set it explicitly, overriding an inherited MPLBACKEND
    # (e.g. Agg from a CI job): under Agg, `plt.show()` draws nothing into the notebook and the
    # book's chapters would hold no static figure at all.
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

    print(f"profile={args.profile} device={args.device} timeout={args.timeout}s", flush=True)
    failures: list[Path] = []
    results: list[tuple[str, float, str]] = []
    total = time.perf_counter()
    for path in paths:
        rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
        print(f"[run ] {rel}", flush=True)
        start = time.perf_counter()
        try:
            execute_one(path, args.timeout, args.kernel)
            status = "ok"
        except Exception as exc:  # noqa: BLE001 - report and go on with the others
            status = "FAILED"
            failures.append(path)
            msg = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            print(f"[fail] {rel}: {msg[-4000:]}", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - start
        results.append((str(rel), elapsed, status))
        print(f"[{status:4s}] {rel}  {elapsed:8.1f} s", flush=True)
        if args.times:
            record_times(args.times, results[-1:], args.profile, args.device)

    print("\nnotebook wall times:")
    for rel, elapsed, status in results:
        print(f"  {elapsed:8.1f} s  {status:6s}  {rel}")
    print(f"  {time.perf_counter() - total:8.1f} s  total")
    if failures:
        print(f"{len(failures)} notebook(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
