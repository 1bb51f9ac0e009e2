"""A persistent grid worker: one Python process per grid slot that runs many ``cl-peft run`` commands in turn.

A fresh ``python -m cl_peft_lib run`` pays its start for every run: importing torch, timm and peft,
initialising CUDA, building the backbone. On the H200 with 12 runs at a time this cost about 20 s per
run (chapter 8's NCM: 2.3 s of training and evaluation, 23 s of grid wall time), more than a quarter of
the protocol. A worker pays it once per slot. Each run still gets what a subprocess would give it: its own
``log.txt`` (file descriptors 1 and 2 are pointed at it, so C-level output lands there too), its seeds
(every run seeds Python, numpy and torch itself), and an exit code; between runs the worker frees the
CUDA cache. A run that raises is a failed run, and the worker goes on; a worker that dies (a crash, a
signal) is replaced by a fresh one for the next run, and the run it held is reported failed.

The line protocol is one JSON object per line: the parent sends ``{"argv": [...], "log": path}`` on the
worker's stdin, the worker answers ``{"rc": code}`` on the pipe it was started with (its original stdout).

Chapter: README ("Several GPUs": the grid's slots); used by :func:`cl_peft_lib.grid.run_cells`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Sequence


def _run_one(argv: list[str], log: str) -> int:
    """Run ``cl-peft <argv>`` in this process with fds 1 and 2 on ``log``; its exit code (1 on an exception)."""
    from .cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse and friends
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # noqa: BLE001 - one failed run, the worker lives on
            traceback.print_exc()
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
    _free_memory()
    return int(rc or 0)


def _free_memory() -> None:
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - freeing the cache is a courtesy, never a failure
        pass


def serve() -> int:
    """The worker's loop (``python -m cl_peft_lib.worker``): read commands on stdin until it closes."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing but replies on the reply pipe, whatever a library prints between runs
    os.close(devnull)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        rc = _run_one(list(job["argv"]), job["log"])
        reply.write(json.dumps({"rc": rc}) + "\n")
    return 0


class Worker:
    """The parent's handle on one worker process (started on first use, restarted after it dies).

    Args:
        env: the worker's environment (the slot's: ``CUDA_VISIBLE_DEVICES``, thread counts).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.stderr: Path | None = None  # what the worker printed outside its runs (a failed start-up)

    def _start(self) -> subprocess.Popen:
        import tempfile

        fd, name = tempfile.mkstemp(prefix="cl-peft-worker-", suffix=".log")
        self.stderr = Path(name)
        try:
            return subprocess.Popen([sys.executable, "-m", "cl_peft_lib.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=fd, env=self.env, text=True, bufsize=1)
        finally:
            os.close(fd)

    def run(self, argv: Sequence[str], log: str | Path) -> int:
        """Run ``cl-peft <argv>`` in the worker, output to ``log``; the exit code (negative: the worker died)."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self.proc = self._start()
            p = self.proc
            try:
                p.stdin.write(json.dumps({"argv": list(argv), "log": str(log)}) + "\n")
                p.stdin.flush()
                line = p.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:  # the worker died with the run: report it (with what it said), start afresh next time
                rc = p.wait()
                self.proc = None
                said = self.stderr.read_text(errors="replace").strip()[-3000:] if self.stderr else ""
                with open(log, "a") as f:
                    f.write(f"\ngrid worker died during this run (exit code {rc})\n" + (said and said + "\n"))
                return rc if rc and rc < 0 else -1
            return int(json.loads(line)["rc"])

    def terminate(self) -> None:
        """Stop the worker (its current run, if any, with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def close(self) -> None:
        """Close the command pipe, so the worker leaves its loop, and wait for it."""
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
            self.proc = None
        if self.stderr is not None:
            self.stderr.unlink(missing_ok=True)
            self.stderr = None


if __name__ == "__main__":
    sys.exit(serve())
