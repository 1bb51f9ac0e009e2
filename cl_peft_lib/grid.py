"""The grid runner: many independent runs (method x benchmark x seed) spread over GPUs or CPU processes.

Every run is an ordinary ``cl-peft run``, made by a persistent worker process of its slot
(:mod:`cl_peft_lib.worker`; ``$CL_PEFT_GRID_PROCESS=fresh``: a new subprocess per run), writing to its
folder in the run store (:func:`cl_peft_lib.store.run_dir`:
``<root>/<profile>/<benchmark>/<key>/seed<seed>/`` with ``results.json``, ``checkpoint.pt``, ``log.txt``).
On GPUs each slot runs one run at a time (``CUDA_VISIBLE_DEVICES`` set to its GPU); a GPU
listed k times (``--gpus 0,0,0,0``) gets k slots, which pays for small models: on one H200 four
slots (4 CPU threads each) ran chapter 5's 18 offline-dil runs in 184 s of wall time for 671 s
of summed run time (3.65x). On a CPU machine ``workers`` runs go in parallel. A run whose
``results.json`` says ``complete`` for the same settings is skipped, so re-running the grid
only does what is missing (an interrupted run resumes from its checkpoint). A failed run is
reported and the others go on. ``deadline`` (or ``$CL_PEFT_DEADLINE``, a Unix time) stops the
grid from *starting* runs after that moment: the runs in flight finish, the rest are reported as
``not started``, and the same command later does only those. :func:`run_cells` runs cells that
each carry their own options (the tuning trials, the tuned head-to-head); :func:`run_grid` is
the rectangular case, one set of options for every run. At the end a grid summary (``<root>/<profile>/grids/<key>.json``,
or ``summary=``) holds every run and, per benchmark and method, the statistics over seeds of the
final metrics.

Example::

    cl-peft grid --methods l2p,dualprompt --benchmarks offline-cil,offline-dil --seeds 0,1,2 \\
        --profile offline                            # all visible GPUs, else one CPU process
    cl-peft grid ... --gpus 0,1                      # these GPUs (indices among the visible ones)
    cl-peft grid ... --workers 2                     # two CPU processes

Chapter: ``notebooks/05_head_to_head.ipynb`` (the head-to-head runs through the grid); README ("Several GPUs").
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .options import format_opts, parse_opts
from .store import canonical_json, run_dir, store_root
from .utils import atomic_write_json

#: Metrics of :func:`cl_peft_lib.metrics.summarize` aggregated over seeds.
SUMMARY_METRICS = ("average_accuracy", "average_incremental_accuracy", "forgetting", "backward_transfer")
#: Launcher variables a child must not inherit (it would try to join the parent's process group).
_TORCHRUN_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@dataclass
class GridRun:
    """One cell of the grid and what became of it."""

    method: str
    benchmark: str
    seed: int
    out: str
    options: dict[str, Any] = field(default_factory=dict)
    action: str = "pending"  # "skipped" (already complete), "ran", "not started" (deadline)
    status: str = "pending"  # "complete", "failed" or "not started"
    slot: str | None = None
    returncode: int | None = None
    wall_s: float | None = None
    error: str | None = None
    metrics: dict[str, float] | None = None

    @property
    def name(self) -> str:
        return f"{self.method} {self.benchmark} seed{self.seed}"


@dataclass(eq=False)
class Slot:
    """Where a run executes: one GPU (``CUDA_VISIBLE_DEVICES``) or one CPU process.

    ``worker`` is the slot's persistent process (:class:`cl_peft_lib.worker.Worker`) when the grid runs
    with ``persistent=True``.
    """

    name: str
    env: dict[str, str] = field(default_factory=dict)
    device: str = "cpu"
    worker: Any = None


def parse_list(s: str | Sequence[str] | None) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (lists pass through)."""
    if s is None:
        return []
    if isinstance(s, str):
        return [x.strip() for x in s.split(",") if x.strip()]
    return [str(x) for x in s]


def make_slots(gpus: Sequence[int] | str | None = None, workers: int | None = None) -> list[Slot]:
    """GPU slots for ``gpus`` (indices among the visible GPUs; ``None`` with no ``workers``: all of
    them), else ``workers`` CPU slots (default 1 when no GPU is visible)."""
    if gpus is not None and not isinstance(gpus, str):
        gpus = ",".join(str(g) for g in gpus)
    if gpus is None and not workers:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        gpus = ",".join(str(i) for i in range(n)) if n else None
    if gpus:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        phys = parse_list(visible) if visible else None
        slots = []
        for g in parse_list(gpus):
            i = int(g)
            if phys is not None and not 0 <= i < len(phys):
                raise ValueError(f"--gpus {gpus}: index {i} is not among the {len(phys)} visible GPUs ({visible})")
            slots.append(Slot(f"gpu{i}", {"CUDA_VISIBLE_DEVICES": phys[i] if phys is not None else str(i)}, "cuda"))
        # Several runs per GPU: share the CPU cores among them. On the H200 machine (16 cores), 12 runs
        # with torch's default of 16 threads each were no faster together than one after another.
        threads = str(max(1, (os.cpu_count() or 1) // len(slots)))
        for s in slots:
            if "OMP_NUM_THREADS" not in os.environ:
                s.env["OMP_NUM_THREADS"] = threads
        return slots
    n = max(1, int(workers or 1))
    threads = str(max(1, (os.cpu_count() or 1) // n))
    return [Slot(f"cpu{i}", {"OMP_NUM_THREADS": threads} if "OMP_NUM_THREADS" not in os.environ else {}, "cpu")
            for i in range(n)]


@dataclass(frozen=True)
class Cell:
    """One run to make: a method with its own options on a benchmark and seed."""

    method: str
    benchmark: str
    seed: int
    options: Mapping[str, Any] = field(default_factory=dict)


def cells_of(methods: Sequence[str], benchmarks: Sequence[str], seeds: Sequence[int],
             options: Mapping[str, Any] | None = None) -> list[Cell]:
    """The rectangular grid as cells, benchmark-major (all methods and seeds of a benchmark together)."""
    return [Cell(m, b, int(s), dict(options or {})) for b in benchmarks for m in methods for s in seeds]


def expected_cost(cell: Cell, profile: str | None = None) -> float:
    """A run's relative cost, for ordering: its method's epochs (with the profile and the cell's options),
    three times that for ``joint`` (it retrains on every task seen so far), half an epoch for the methods
    that train no backbone pass at all (``ncm``, ``ranpac``: epochs 0)."""
    from .loop import method_config
    from .profiles import get_profile

    epochs = getattr(method_config(cell.method, get_profile(profile), dict(cell.options)), "epochs", 1) or 0.5
    return float(epochs) * (3.0 if cell.method == "joint" else 1.0)


def longest_first_order(cells: Sequence[Cell], profile: str | None = None) -> list[int]:
    """The indices of ``cells`` by :func:`expected_cost`, the longest first (ties keep their order): with
    several slots the long runs start early and the short ones fill the gaps, so the slots finish together
    (on the H200 the 20-epoch methods take up to 174 s a run, NCM 2 s)."""
    cost = [expected_cost(c, profile) for c in cells]
    return sorted(range(len(cells)), key=lambda i: -cost[i])


def longest_first(cells: Sequence[Cell], profile: str | None = None) -> list[Cell]:
    """``cells`` in :func:`longest_first_order`."""
    return [cells[i] for i in longest_first_order(cells, profile)]


def plan_cells(cells: Sequence[Cell], profile: str, backbone: str | None = None,
               root: str | Path | None = None) -> list[GridRun]:
    """Each cell's run in its run-store folder (:func:`cl_peft_lib.store.run_dir`); two cells of one folder are refused."""
    runs = [GridRun(c.method, c.benchmark, int(c.seed),
                    str(run_dir(profile, c.benchmark, c.method, c.seed, dict(c.options), backbone, root).resolve()),
                    dict(c.options)) for c in cells]
    seen: dict[str, GridRun] = {}
    for r in runs:
        if r.out in seen:
            raise ValueError(f"two cells of the grid are the same run ({r.name}, options {r.options}); list it once")
        seen[r.out] = r
    return runs


def plan(methods: Sequence[str], benchmarks: Sequence[str], seeds: Sequence[int], profile: str,
         options: dict[str, Any] | None = None, backbone: str | None = None,
         root: str | Path | None = None) -> list[GridRun]:
    """The runs of the grid, benchmark-major (all methods and seeds of a benchmark together), each in
    its run-store folder (:func:`cl_peft_lib.store.run_dir`)."""
    return plan_cells(cells_of(methods, benchmarks, seeds, options), profile, backbone, root)


def summary_path(methods: Sequence[str], benchmarks: Sequence[str], seeds: Sequence[int], profile: str,
                 options: dict[str, Any] | None = None, backbone: str | None = None,
                 root: str | Path | None = None) -> Path:
    """Default place of a grid's summary: ``<root>/<profile>/grids/<key>.json`` (one file per grid)."""
    import hashlib

    ident = canonical_json({"methods": list(methods), "benchmarks": list(benchmarks), "seeds": list(seeds),
                            "options": options or {}, "backbone": backbone})
    name = f"{'+'.join(methods)[:40]}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}.json"
    return store_root(root) / profile / "grids" / name


def _read_results(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_finished(run: GridRun, profile: str, backbone: str | None, options: dict[str, Any] | None = None) -> bool:
    """``results.json`` is complete and was made with these very settings.

    A complete result made with other settings is not skipped: the child then meets the
    checkpoint of the other run and refuses it (reported as a failure naming the folder).
    """
    res = _read_results(Path(run.out) / "results.json")
    if not res or res.get("status") != "complete":
        return False
    r = res.get("run", {})
    want_opts = json.loads(json.dumps(run.options if options is None else options, default=str))
    return (r.get("method") == run.method and r.get("benchmark") == run.benchmark and r.get("seed") == run.seed
            and res.get("profile") == profile and r.get("backbone") == backbone
            and (r.get("method_options") or {}) == want_opts)


def child_command(run: GridRun, slot: Slot, profile: str, backbone: str | None, opts: Sequence[str]) -> list[str]:
    """The ``cl-peft run`` command line of one run."""
    cmd = [sys.executable, "-m", "cl_peft_lib", "run", "--method", run.method, "--benchmark", run.benchmark,
           "--seed", str(run.seed), "--profile", profile, "--device", slot.device, "--out", run.out, "--quiet"]
    if backbone:
        cmd += ["--backbone", backbone]
    for o in opts:
        cmd += ["--opt", o]
    return cmd


def child_env(slot: Slot) -> dict[str, str]:
    """The parent's environment, minus torchrun's variables, plus the slot's and NVLink multicast off."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    env.update(slot.env)
    env["NCCL_NVLS_ENABLE"] = "0"  # the GPU machines' notes: NVLink multicast stays off
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _tail(path: Path, lines: int = 6) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def summarize_grid(runs: Sequence[GridRun]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{benchmark: {method: {"seeds": [...], "n": k, metric: {...}}}}`` over complete runs.

    A method that the grid runs with several option sets on one benchmark (the protocol: tuned and at its
    defaults) gets one entry per set, ``"<method> <key=value ...>"`` (``"<method> (defaults)"``), so that
    seeds of different settings are never pooled.

    Each metric cell is :meth:`cl_peft_lib.stats.Summary.to_dict` of its per-seed values:
    ``mean``, ``std`` (sample, ``ddof=1``; ``None`` with one seed), ``n``, the 95% Student-t
    interval ``ci_low`` / ``ci_high`` (``None`` with one seed), ``ci_level``, and ``values``
    with their ``seeds``; ``None`` when no complete run has the metric.
    """
    from .stats import describe

    def label(r: GridRun) -> str:  # a method run with several option sets (tuned and defaults): one row each
        sets = {canonical_json(x.options) for x in runs if x.benchmark == r.benchmark and x.method == r.method}
        return r.method if len(sets) == 1 else f"{r.method} {' '.join(format_opts(r.options)) or '(defaults)'}"

    out: dict[str, dict[str, dict[str, Any]]] = {}
    labels = [label(r) for r in runs]
    for b in dict.fromkeys(r.benchmark for r in runs):
        for m in dict.fromkeys(lab for r, lab in zip(runs, labels) if r.benchmark == b):
            done = [r for r, lab in zip(runs, labels) if r.benchmark == b and lab == m and r.status == "complete"
                    and r.metrics]
            cell: dict[str, Any] = {"seeds": [r.seed for r in done], "n": len(done)}
            for k in SUMMARY_METRICS:
                vals = {r.seed: float(r.metrics[k]) for r in done if r.metrics.get(k) is not None}
                cell[k] = describe(vals).to_dict() if vals else None
            out.setdefault(b, {})[m] = cell
    return out


def format_summary(summary: dict[str, dict[str, dict[str, Any]]], metric: str = "average_accuracy") -> str:
    """A plain-text table: rows methods, columns benchmarks, cells ``mean ± std [95% CI] (n)``.

    A cell of one seed reads ``mean (1 seed)``: its spread is unknown, not zero.
    """
    benches = list(summary)
    methods = list(dict.fromkeys(m for b in benches for m in summary[b]))
    w = max([len(b) for b in benches] + [30]) + 2
    lines = [f"{metric} (%), mean ± sample std [95% t interval] (seeds)",
             "method".ljust(16) + "".join(b.rjust(w) for b in benches)]
    for m in methods:
        cells = []
        for b in benches:
            c = summary[b].get(m, {}).get(metric)
            if not c:
                cells.append("-")
            elif c.get("std") is None or c.get("n") == 1:  # (old grid.json files wrote std 0.0 for one seed)
                cells.append(f"{c['mean']:.2f} (1 seed)")
            elif c.get("ci_low") is None:  # a grid.json of before the intervals
                cells.append(f"{c['mean']:.2f} ± {c['std']:.2f} ({c['n']})")
            else:
                cells.append(f"{c['mean']:.2f} ± {c['std']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}] ({c['n']})")
        lines.append(m.ljust(16) + "".join(x.rjust(w) for x in cells))
    return "\n".join(lines)


def _deadline(deadline: float | None) -> float | None:
    """``deadline`` or ``$CL_PEFT_DEADLINE`` (a Unix time), else None."""
    if deadline is not None:
        return float(deadline)
    env = os.environ.get("CL_PEFT_DEADLINE")
    if not env:
        return None
    try:
        return float(env)
    except ValueError:
        raise ValueError(f"CL_PEFT_DEADLINE={env!r} is not a Unix time in seconds (e.g. $(( $(date +%s) + 540 )))") from None


def run_grid(methods: Sequence[str] | str, benchmarks: Sequence[str] | str, seeds: Sequence[int] | str = (0,),
             profile: str | None = None, root: str | Path | None = None, gpus: Sequence[int] | str | None = None,
             workers: int | None = None, backbone: str | None = None,
             opts: Sequence[str] | Mapping[str, Any] | None = (),
             log: Callable[[str], None] | None = print, summary: str | Path | None = None,
             deadline: float | None = None) -> dict[str, Any]:
    """Run (or skip) every method x benchmark x seed in the run store; write and return the grid summary.

    Args:
        methods, benchmarks: names (lists or comma-separated strings); checked before anything runs.
        seeds: seeds (ints or ``"0,1,2"``).
        profile: ``smoke``, ``offline`` or ``paper`` (default ``$CL_PEFT_PROFILE`` or ``offline``).
        root: the run store's root (default ``$CL_PEFT_RUNS`` or ``runs``).
        gpus: GPU indices among the visible ones; default all visible GPUs unless ``workers`` is given.
        workers: parallel CPU processes (used when no GPU is selected).
        backbone: override of the profile's backbone, for every run.
        opts: method options for every run: ``KEY=VALUE`` strings (``cl-peft run --opt``) or a dict;
            checked against every method's config before anything runs.
        log: where progress lines go (None: silent).
        summary: where the summary JSON goes (default :func:`summary_path`).
        deadline: Unix time after which no run is started (default ``$CL_PEFT_DEADLINE``; None: no limit).

    Returns:
        The summary dict (also written to ``summary``, its path under ``path``): ``config``, ``runs`` (one entry
        per run with ``action``, ``status``, ``metrics``, ``error``), ``counts`` and ``summary``.
    """
    methods, benchmarks = parse_list(methods), parse_list(benchmarks)
    seed_list = [int(s) for s in parse_list(seeds)] if isinstance(seeds, str) else [int(s) for s in seeds]
    _check_names(methods, benchmarks, backbone)
    if not seed_list:
        raise ValueError("no seeds given")
    options = parse_opts(opts)
    if summary is None:
        from .profiles import get_profile

        summary = summary_path(methods, benchmarks, seed_list, get_profile(profile).name, options, backbone, root)
    return run_cells(cells_of(methods, benchmarks, seed_list, options), profile, root, gpus, workers, backbone,
                     log, summary, deadline)


def _check_names(methods: Sequence[str], benchmarks: Sequence[str], backbone: str | None) -> None:
    from .backbones import BACKBONES
    from .data.scenarios import BENCHMARKS
    from .methods import METHODS

    for kind, names, valid in (("method", methods, METHODS), ("benchmark", benchmarks, BENCHMARKS)):
        if not names:
            raise ValueError(f"no {kind}s given")
        bad = [n for n in names if n not in valid]
        if bad:
            raise KeyError(f"unknown {kind}(s) {bad}; valid: {', '.join(sorted(valid))}")
    if backbone is not None and backbone not in BACKBONES:
        raise KeyError(f"unknown backbone '{backbone}'; valid: {', '.join(sorted(BACKBONES))}")


def run_cells(cells: Sequence[Cell], profile: str | None = None, root: str | Path | None = None,
              gpus: Sequence[int] | str | None = None, workers: int | None = None, backbone: str | None = None,
              log: Callable[[str], None] | None = print, summary: str | Path | None = None,
              deadline: float | None = None, persistent: bool | None = None) -> dict[str, Any]:
    """Run (or skip) every cell, each with its own options, in the run store; write and return the summary.

    The arguments are :func:`run_grid`'s, with ``cells`` (:class:`Cell`) in place of methods x benchmarks x seeds
    x opts. Every cell's options are checked against its method's config before anything runs.
    ``persistent`` runs each slot's runs in one long-lived process (:mod:`cl_peft_lib.worker`: the start-up
    of torch, CUDA and the backbone paid once per slot, not once per run); ``False`` starts a fresh
    ``python -m cl_peft_lib run`` for every run. Default: ``$CL_PEFT_GRID_PROCESS`` (``persistent`` or
    ``fresh``), else persistent.
    """
    from .loop import method_config
    from .profiles import get_profile

    cells = list(cells)
    if not cells:
        raise ValueError("no runs given")
    _check_names(list(dict.fromkeys(c.method for c in cells)), list(dict.fromkeys(c.benchmark for c in cells)),
                 backbone)
    profile = get_profile(profile).name
    cells = [Cell(c.method, c.benchmark, int(c.seed), parse_opts(dict(c.options))) for c in cells]
    for c in cells:  # a bad option fails here, not once per run
        method_config(c.method, get_profile(profile), dict(c.options))
    deadline = _deadline(deadline)
    slots = make_slots(gpus, workers)
    if persistent is None:
        mode = os.environ.get("CL_PEFT_GRID_PROCESS", "persistent")
        if mode not in ("persistent", "fresh"):
            raise ValueError(f"CL_PEFT_GRID_PROCESS={mode!r}: use 'persistent' (one process per slot) or 'fresh' "
                             f"(one process per run)")
        persistent = mode == "persistent"
    if persistent:
        from .worker import Worker

        for s in slots:
            s.worker = Worker(child_env(s))
    runs = plan_cells(cells, profile, backbone, root)
    say = log or (lambda s: None)
    lock = threading.Lock()
    t_grid = time.perf_counter()

    todo = []
    for r in runs:
        if is_finished(r, profile, backbone):
            r.action, r.status = "skipped", "complete"
            r.metrics = (_read_results(Path(r.out) / "results.json") or {}).get("metrics")
        else:
            todo.append(r)
    say(f"grid: {len(runs)} runs, {len(runs) - len(todo)} already complete (skipped), {len(todo)} to run "
        f"on {', '.join(s.name for s in slots)}")

    free: queue.Queue[Slot] = queue.Queue()
    for s in slots:
        free.put(s)
    procs: set[subprocess.Popen] = set()
    done = [0]

    def execute(r: GridRun) -> None:
        slot = free.get()
        if deadline is not None and time.time() > deadline:
            r.action = r.status = "not started"
            free.put(slot)
            return
        try:
            r.slot, r.action = slot.name, "ran"
            Path(r.out).mkdir(parents=True, exist_ok=True)
            logf = Path(r.out) / "log.txt"
            t0 = time.perf_counter()
            cmd = child_command(r, slot, profile, backbone, format_opts(r.options))
            if slot.worker is not None:
                r.returncode = slot.worker.run(cmd[3:], logf)  # cmd[3:]: the arguments after "-m cl_peft_lib"
            else:
                with open(logf, "w") as f:
                    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(slot))
                    with lock:
                        procs.add(p)
                    r.returncode = p.wait()
                    with lock:
                        procs.discard(p)
            r.wall_s = round(time.perf_counter() - t0, 2)
            res = _read_results(Path(r.out) / "results.json")
            if r.returncode == 0 and res and res.get("status") == "complete":
                r.status, r.metrics = "complete", res.get("metrics")
            else:
                r.status = "failed"
                r.error = (res or {}).get("error") or _tail(logf) or f"exit code {r.returncode}"
        except Exception as e:  # noqa: BLE001 - a run that cannot even start is one failed run
            r.status, r.error = "failed", f"{type(e).__name__}: {e}"
        finally:
            free.put(slot)
        with lock:
            done[0] += 1
            last = (r.error or "").strip().splitlines()[-1:] or [""]
            msg = (f"avg acc {r.metrics['average_accuracy']:.2f}" if r.status == "complete" and r.metrics
                   else f"FAILED (exit {r.returncode}): {last[0]}")
            say(f"[{done[0]}/{len(todo)}] {r.name} on {r.slot}: {msg} ({r.wall_s} s) -> {r.out}")

    try:
        with ThreadPoolExecutor(max_workers=len(slots)) as ex:
            for f in [ex.submit(execute, r) for r in todo]:
                f.result()
    except KeyboardInterrupt:
        with lock:
            for p in procs:
                p.terminate()
        for s in slots:
            if s.worker is not None:
                s.worker.terminate()
        raise
    finally:
        for s in slots:
            if s.worker is not None:
                s.worker.close()

    stats = summarize_grid(runs)
    counts = {"total": len(runs), "ran": sum(r.action == "ran" for r in runs),
              "skipped": sum(r.action == "skipped" for r in runs),
              "complete": sum(r.status == "complete" for r in runs), "failed": sum(r.status == "failed" for r in runs),
              "not_started": sum(r.status == "not started" for r in runs)}
    methods = list(dict.fromkeys(r.method for r in runs))
    benchmarks = list(dict.fromkeys(r.benchmark for r in runs))
    seed_list = list(dict.fromkeys(r.seed for r in runs))
    option_sets = list({canonical_json(r.options): r.options for r in runs}.values())
    grid = {
        "config": {"methods": methods, "benchmarks": benchmarks, "seeds": seed_list, "profile": profile,
                   "backbone": backbone, "opts": list(format_opts(option_sets[0])) if len(option_sets) == 1 else None,
                   "cells": [{"method": r.method, "benchmark": r.benchmark, "seed": r.seed, "options": r.options}
                             for r in runs],
                   "slots": [s.name for s in slots]},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "wall_s": round(time.perf_counter() - t_grid, 2),
        "counts": counts,
        "runs": [vars(r).copy() for r in runs],
        "summary": stats,
    }
    if summary:
        path = Path(summary)
    else:
        import hashlib

        ident = hashlib.sha256(canonical_json(grid["config"]["cells"]).encode()).hexdigest()[:10]
        path = store_root(root) / profile / "grids" / f"{'+'.join(methods)[:40]}-cells-{ident}.json"
    grid["path"] = str(path)
    atomic_write_json(path, grid)
    say(format_summary(stats))
    say(f"ran {counts['ran']}, skipped {counts['skipped']}, failed {counts['failed']}, "
        f"not started {counts['not_started']} of {counts['total']}; summary: {path}")
    if counts["not_started"]:
        say(f"deadline reached: {counts['not_started']} runs not started; the same command again runs only those")
    for r in runs:
        if r.status == "failed":
            say(f"failed: {r.name} ({r.out}/log.txt): {r.error}")
    return grid
