"""Persistent grid workers (cl_peft_lib.worker): one process per slot, runs identical to fresh processes,
a failed run does not end the worker, a dead worker is replaced."""
from __future__ import annotations

import json
import os

import pytest

from cl_peft_lib.grid import Cell, child_env, longest_first, run_cells
from cl_peft_lib.grid import Slot
from cl_peft_lib.worker import Worker

BB = "test_vit_micro"
CELLS = [Cell("l2p", "offline-cil", 0, {"epochs": 1}), Cell("lora", "offline-cil", 0, {"epochs": 1}),
         Cell("l2p", "offline-cil", 1, {"epochs": 1})]


def _matrices(g):
    return {(r["method"], r["seed"]): json.loads(open(os.path.join(r["out"], "results.json")).read())["accuracy_matrix"]
            for r in g["runs"]}


def test_a_worker_makes_the_same_runs_as_fresh_processes(tmp_path):
    """Three runs one after another in one worker (state could leak from one into the next) equal the
    same runs made each in its own process, bit for bit; each run has its own log."""
    fresh = run_cells(CELLS, "smoke", tmp_path / "fresh", workers=1, backbone=BB, log=None, persistent=False)
    kept = run_cells(CELLS, "smoke", tmp_path / "kept", workers=1, backbone=BB, log=None, persistent=True)
    assert fresh["counts"]["complete"] == kept["counts"]["complete"] == 3
    assert _matrices(kept) == _matrices(fresh)
    for r in kept["runs"]:
        log = open(os.path.join(r["out"], "log.txt")).read()
        assert f"{r['method']} on offline-cil" in log and f"seed {r['seed']}" in log  # the run's own summary


def test_a_failed_run_leaves_the_worker_alive_and_a_dead_worker_is_replaced(tmp_path):
    w = Worker(child_env(Slot("cpu0")))
    try:
        bad = tmp_path / "bad.txt"
        assert w.run(["run", "--method", "nope", "--benchmark", "offline-cil"], bad) == 2
        assert "unknown method" in bad.read_text()
        pid = w.proc.pid
        assert w.run(["list"], tmp_path / "list.txt") == 0 and w.proc.pid == pid  # the same process went on
        assert "methods:" in (tmp_path / "list.txt").read_text()
        w.proc.kill()
        w.proc.wait()
        assert w.run(["list"], tmp_path / "again.txt") == 0 and w.proc.pid != pid  # a fresh worker took over
    finally:
        w.close()
    assert w.proc is None


def test_a_bad_process_mode_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_PEFT_GRID_PROCESS", "threads")
    with pytest.raises(ValueError, match="persistent.*fresh"):
        run_cells(CELLS[:1], "smoke", tmp_path, workers=1, backbone=BB, log=None)
    assert not any(tmp_path.rglob("results.json"))


def test_longest_first_puts_the_20_epoch_methods_before_ncm():
    cells = [Cell("ncm", "offline-cil", 0), Cell("l2p", "offline-cil", 0), Cell("coda", "offline-cil", 0),
             Cell("joint", "offline-cil", 0), Cell("l2p", "offline-cil", 1, {"epochs": 30})]
    assert [(c.method, c.seed) for c in longest_first(cells, "offline")] == [
        ("l2p", 1), ("coda", 0), ("joint", 0), ("l2p", 0), ("ncm", 0)]


def test_a_worker_that_cannot_start_says_why_in_the_runs_log(tmp_path):
    """A broken install (here a cl_peft_lib that raises on import, found first on the path) kills the worker
    before its first run; that run fails with the worker's own error in its log.txt."""
    (tmp_path / "cl_peft_lib").mkdir()
    (tmp_path / "cl_peft_lib" / "__init__.py").write_text("raise ImportError('a broken install')\n")
    # PYTHONSAFEPATH: `-m` must not put the working directory (the real library) first on the path
    w = Worker({**child_env(Slot("cpu0")), "PYTHONPATH": str(tmp_path), "PYTHONSAFEPATH": "1"})
    try:
        log = tmp_path / "log.txt"
        assert w.run(["list"], log) == -1 and w.proc is None
        text = log.read_text()
        assert "grid worker died during this run (exit code 1)" in text and "a broken install" in text
    finally:
        w.close()
    assert w.stderr is None
