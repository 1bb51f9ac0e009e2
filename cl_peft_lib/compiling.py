"""Regional ``torch.compile`` of a method's ViT blocks: on by default where it pays, eager elsewhere (issue 16).

The switch is ``$CL_PEFT_COMPILE`` (like ``$CL_PEFT_AMP``, an execution setting: it is recorded in a run's
provenance, not in its identity, since it changes no setting of the method):

* ``auto`` (unset): compile on CUDA under the profiles in :data:`PAYS_PROFILES`, eager everywhere else;
* ``on``: compile wherever this machine can (CPU included);
* ``off``: never.

:data:`PAYS_PROFILES` is empty: measured on the H200, compilation paid back under no profile of this
book. A compiled training *step* is 1.2-1.4x faster at paper scale (``benchmarks/results_h200.json``,
batch 256), but whole runs through the loop (``cl_peft_lib/records/compile_check.json``, made by
``scripts/compile_check.py``) were slower compiled: the colab cut's runs train for seconds per task, less than
compiling the blocks takes (forward, backward, the evaluation graphs, a recompile for the last batch of
another size), and the paper profile's LoRA trains at its reference batch of 16, where a step is bound by
its many small kernels rather than by the ViT's arithmetic. ``tests/test_compiling.py`` checks
:data:`PAYS_PROFILES` against that record, so a profile joins it only with a measurement that says so.

What is compiled is every timm ``Block`` of the method, in place (``Block.compile``: regional compilation,
one compiled graph serves all twelve identical blocks); the patch embedding, the heads and a method's
own code around the blocks stay eager, so nothing of a method has to be written for the compiler.
A block that a method runs through its sub-modules (DualPrompt's prefix-tuned ones) stays eager.

Falling back: where compilation cannot work (no CUDA GPU of compute capability 7.0+, no Triton) the run
says why and trains eagerly; an error while compiling a graph falls back to eager for that graph
(``torch._dynamo.config.suppress_errors``), so a compiler problem never fails a run.

Chapter: ``notebooks/07_efficiency.ipynb`` ("Compiled, in the loop?": the verdicts of :func:`measured_verdicts`).
"""
from __future__ import annotations

import importlib.util
import os

import torch
from torch import nn

#: the environment variable of the switch
COMPILE_ENV = "CL_PEFT_COMPILE"
#: its values
COMPILE_MODES: tuple[str, ...] = ("auto", "on", "off")
#: profiles under which ``auto`` compiles on CUDA: those whose compiled runs, compilation included, took less
#: wall time than eager ones in ``cl_peft_lib/records/compile_check.json`` (none did; see the module's docstring)
PAYS_PROFILES: tuple[str, ...] = ()


def compile_mode() -> str:
    """``$CL_PEFT_COMPILE``: ``auto`` (unset), ``on`` or ``off``.

    Raises:
        ValueError: any other value; the message lists the accepted ones.
    """
    mode = os.environ.get(COMPILE_ENV, "").strip().lower() or "auto"
    if mode not in COMPILE_MODES:
        raise ValueError(f"{COMPILE_ENV}={os.environ[COMPILE_ENV]!r} is not a mode; use on, off or auto "
                         f"(unset: {_auto_rule()})")
    return mode


def _auto_rule() -> str:
    """What ``auto`` does, in words."""
    if PAYS_PROFILES:
        return f"compiled on CUDA under the {'/'.join(PAYS_PROFILES)} profiles"
    return "compiled under no profile, where it did not pay; CL_PEFT_COMPILE=on compiles"


def unavailable_reason(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot compile on ``device`` here (None: it can)."""
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "Triton is not installed (pip install triton)"
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"the GPU has compute capability {major}.{minor}; Triton needs 7.0 or newer"
        return None
    if device.type == "cpu":
        return None  # Inductor's C++ backend; a missing compiler surfaces as a per-graph fallback
    return f"torch.compile is not used on {device.type}"


def wanted(profile: str, device: torch.device, mode: str | None = None) -> tuple[bool, str]:
    """Whether a run of ``profile`` on ``device`` compiles, and a line that says why.

    Args:
        profile: the run's profile name.
        device: the run's device.
        mode: ``auto``, ``on`` or ``off`` (default: :func:`compile_mode`).
    """
    mode = mode or compile_mode()
    if mode == "off":
        return False, f"eager ({COMPILE_ENV}=off)"
    if mode == "auto" and not (device.type == "cuda" and profile in PAYS_PROFILES):
        return False, f"eager ({COMPILE_ENV} unset: {_auto_rule()})"
    why = unavailable_reason(device)
    if why:
        return False, f"eager: {why}"
    return True, f"compiled blocks ({COMPILE_ENV}={mode})"


def compile_blocks(model: nn.Module, dynamic: bool | None = None, fallback: bool = True,
                   backend: str = "inductor") -> int:
    """Regional compilation: ``torch.compile`` every timm ViT ``Block`` of ``model`` in place; returns how many.

    Generic across methods: prompt methods call ``vit.blocks`` (each block compiled), peft's and L2L's
    LoRA layers live inside the blocks. Dynamo's caches are reset first (one run's graphs never count
    against the next run's recompilation limit) and the limit is raised to 64, since a method that adds
    modules per task (S-X) recompiles once per task.

    Args:
        model: a method (or any module holding timm blocks).
        dynamic: ``torch.compile``'s ``dynamic``: None (its default) recompiles once with a dynamic batch
            size when a second batch size appears (last batches, evaluation); False keeps every shape static
            (the benchmark's fixed shapes).
        fallback: fall back to eager for a graph that fails to compile instead of raising.
        backend: ``torch.compile``'s backend (tests use ``eager``: Dynamo's tracing alone, same numbers).
    """
    from timm.models.vision_transformer import Block

    import torch._dynamo

    torch._dynamo.reset()
    try:
        from torch._dynamo.utils import counters
        counters.clear()
    except ImportError:  # pragma: no cover
        pass
    cfg = torch._dynamo.config
    for k in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, k):
            setattr(cfg, k, max(64, getattr(cfg, k)))
    cfg.suppress_errors = fallback
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for b in blocks:
        b.compile(dynamic=dynamic, backend=backend)
    return len(blocks)


def dynamo_stats() -> dict:
    """Graph breaks and compiled graphs since the last :func:`compile_blocks` (did compilation cover the model?)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return {}
    return {"graph_breaks": int(sum(counters["graph_break"].values())),
            "graph_break_reasons": sorted(counters["graph_break"])[:5],
            "unique_graphs": int(counters["stats"].get("unique_graphs", 0))}


def measured_verdicts(record: dict) -> dict[str, dict]:
    """Per profile of a ``scripts/compile_check.py`` record: eager and compiled wall time summed over its runs
    (compilation included), the training speed-up after the first task, and whether compiling paid.

    Returns:
        ``{profile: {"eager_s", "compiled_s", "train_speedup", "runs", "pays"}}``.
    """
    out: dict[str, dict] = {}
    for rows in record["profiles"].values():
        for row in rows:
            v = out.setdefault(row["profile"], {"eager_s": 0.0, "compiled_s": 0.0, "eager_train_s": 0.0,
                                                "compiled_train_s": 0.0, "runs": 0})
            v["eager_s"] += row["off"]["wall_s"]
            v["compiled_s"] += row["on"]["wall_s"]
            v["eager_train_s"] += sum(row["off"]["train_s"][1:])  # task 0 of a compiled run holds its compilation
            v["compiled_train_s"] += sum(row["on"]["train_s"][1:])
            v["runs"] += 1
    for v in out.values():
        v["train_speedup"] = round(v["eager_train_s"] / max(v["compiled_train_s"], 1e-9), 3)
        v["pays"] = v["compiled_s"] < v["eager_s"]
    return out
