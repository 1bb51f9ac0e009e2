"""Small helpers: seeding, devices, mixed precision, provenance, atomic JSON.

Chapter: ``notebooks/01_continual_learning.ipynb`` (the provenance line every chapter prints).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import random
import subprocess
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class DeviceError(ValueError, RuntimeError):
    """A device name that is not one, or a device this machine does not have."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:N``, ``mps`` are checked.

    None means ``$CL_PEFT_DEVICE`` when it is set, else ``auto``.

    Raises:
        DeviceError: (a ``ValueError``) an unknown device type, or CUDA/MPS or a GPU index this
            machine does not have; the message names where the value came from.
    """
    from_env = device is None and bool(os.environ.get("CL_PEFT_DEVICE", "").strip())
    name = (os.environ["CL_PEFT_DEVICE"] if from_env else str(device or "auto")).strip()
    what = f"CL_PEFT_DEVICE={name!r}" if from_env else f"device '{name}'"
    if name.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{what} is not a device; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceError(f"{what} asked for but CUDA is not available on this machine; use cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise DeviceError(f"{what}: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{what} asked for but MPS is not available on this machine; use cpu or auto")
    return dev


AMP_MODES: tuple[str, ...] = ("auto", "bf16", "fp16", "off")


def amp_mode() -> str:
    """The mixed-precision switch ``$CL_PEFT_AMP``: ``auto`` (unset), ``bf16``, ``fp16`` or ``off``.

    Raises:
        ValueError: any other value; the message lists the accepted ones.
    """
    mode = os.environ.get("CL_PEFT_AMP", "").strip().lower() or "auto"
    if mode not in AMP_MODES:
        raise ValueError(f"CL_PEFT_AMP={os.environ['CL_PEFT_AMP']!r} is not a mode; use fp16, bf16 or off "
                         f"(unset: bf16 where the GPU supports it, else fp16)")
    return mode


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype on CUDA, None (fp32) elsewhere.

    ``$CL_PEFT_AMP`` chooses (:func:`amp_mode`): unset, bf16 on GPUs that support it and fp16 on
    older ones (T4); ``fp16`` forces fp16 (the loop's ``GradScaler`` path) even on a bf16 GPU;
    ``bf16`` forces bf16; ``off`` trains in fp32.

    Raises:
        ValueError: a bad ``$CL_PEFT_AMP``, or ``bf16`` on a GPU without bf16 support.
    """
    mode = amp_mode()
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise ValueError("CL_PEFT_AMP=bf16 but this GPU does not support bf16; use fp16 or off")
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_label(device: torch.device) -> str:
    """The AMP choice as provenance records it: ``bf16``, ``fp16`` or ``off``."""
    return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "off"}[amp_dtype(device)]


def autocast(device: torch.device):
    """Autocast context for :func:`amp_dtype` (a no-op on CPU or with ``CL_PEFT_AMP=off``)."""
    dt = amp_dtype(device)
    return torch.autocast(device.type, dtype=dt) if dt is not None else nullcontext()


def _git_commit() -> str | None:
    """Short commit of the library's checkout, ``+dirty`` when its tracked files (``cl_peft_lib/``) differ from it."""
    here = Path(__file__).parent
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, cwd=here)
        commit = out.stdout.strip() or None
        if commit:
            diff = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
                                  capture_output=True, text=True, timeout=5, cwd=here)
            if diff.returncode == 0 and diff.stdout.strip():
                commit += "+dirty"
        return commit
    except Exception:
        return None


def provenance(device: torch.device | str | None = None, **extra: Any) -> dict[str, Any]:
    """Where and with what a result was made: device, versions, date, commit, plus ``extra``."""
    import peft
    import timm

    dev = resolve_device(str(device) if device is not None else None)
    info = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "timm": timm.__version__,
        "peft": peft.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "amp": amp_label(dev),
    }
    info.update(extra)
    return info


def provenance_line(**kwargs: Any) -> str:
    """:func:`provenance` as one printable line (notebooks print it first)."""
    return " | ".join(f"{k}={v}" for k, v in provenance(**kwargs).items() if v is not None)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON so that readers never see a half-written file (write, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (torch.Tensor, np.ndarray)):
        return o.tolist()
    if isinstance(o, (Path, torch.device, torch.dtype)):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")
