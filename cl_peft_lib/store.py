"""The run store: the one place that decides where a run and its evaluations live.

Every run (``cl-peft run``, the grid, the chapters, the benchmark's end-to-end runs) gets
its folder from :func:`run_dir`::

    <root>/<profile>/<benchmark>/<key>/seed<seed>/
        results.json        the run (schema: cl_peft_lib.results)
        checkpoint.pt       the method's state after its last finished task
        eval/<ekey>.json    evaluations of the finished run under other settings (oracle task id,
                            merged weights, masking, batch-wise selection, validation split)

The key is collision-free: a readable prefix (method, then the options and the backbone
override, shortened) plus a hash of the *canonical, type-preserving* identity, so
``layers=(1,10)`` and ``layers=(11,0)``, ``lr=1`` and ``lr=1.0``, ``"1"`` and ``1``, a tuple
and a list all get folders of their own, while the same settings always meet the same
folder (and so the same checkpoint). A run with no options and the profile's backbone keeps
the plain method name (``runs/offline/offline-cil/l2p/seed0``). Evaluation settings are not
part of a run's identity: evaluating a finished run differently never retrains it.

Chapter: ``notebooks/06_ablations.ipynb`` (oracle evaluation of finished runs) and
``notebooks/01_continual_learning.ipynb`` (chapters run methods in their run-store folders).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

#: Environment variable naming the store's root folder (default ``runs``).
ROOT_ENV = "CL_PEFT_RUNS"
#: Length of the hash suffix of a key (hex digits of sha256).
HASH_LEN = 10
#: Longest readable prefix of a key.
PREFIX_LEN = 48


def _canonical(v: Any) -> Any:
    """A JSON-able form that keeps types apart: tuples, lists, ints, floats, bools, strings, None."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return {"int": v}
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, tuple):
        return {"tuple": [_canonical(x) for x in v]}
    if isinstance(v, list):
        return {"list": [_canonical(x) for x in v]}
    if isinstance(v, Mapping):
        return {"dict": {str(k): _canonical(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}}
    return {type(v).__name__: repr(v)}


def canonical_json(obj: Any) -> str:
    """The canonical, type-preserving JSON text of ``obj`` (what keys are hashed from)."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))


def _short(v: Any) -> str:
    if isinstance(v, (tuple, list)):
        return "_".join(_short(x) for x in v) or "none"
    return re.sub(r"[^A-Za-z0-9.+-]", "", str(v)) or "x"


def _key(prefix: str, ident: Any) -> str:
    digest = hashlib.sha256(canonical_json(ident).encode()).hexdigest()[:HASH_LEN]
    return f"{prefix[:PREFIX_LEN].rstrip('-_')}-{digest}"


def run_key(method: str, options: Mapping[str, Any] | None = None, backbone: str | None = None) -> str:
    """Folder name of a run of ``method`` with these method ``options`` and ``backbone`` override.

    The plain method name when there are neither; else ``<method>-<readable options>-<hash>``.
    """
    options = dict(options or {})
    if not options and backbone is None:
        return method
    parts = [method] + [f"{k}{_short(v)}" for k, v in sorted(options.items())]
    if backbone is not None:
        parts.append(_short(backbone))
    return _key("-".join(parts), {"method": method, "options": options, "backbone": backbone})


def backbone_override(profile: str, backbone: str | None, method: str | None = None) -> str | None:
    """``backbone`` unless it is the one the profile gives ``method`` anyway (its own backbone, or the
    method's reference backbone on the paper profile): then None, the run is the default run."""
    from .profiles import PROFILES

    if profile not in PROFILES or backbone is None:
        return backbone
    p = PROFILES[profile]
    default = p.backbone_for(method) if method else p.backbone
    return None if backbone == default else backbone


def store_root(root: str | os.PathLike | None = None) -> Path:
    """``root``, else ``$CL_PEFT_RUNS``, else ``runs`` (relative to the working directory)."""
    return Path(root if root is not None else os.environ.get(ROOT_ENV, "runs"))


def run_dir(profile: str, benchmark: str, method: str, seed: int, options: Mapping[str, Any] | None = None,
            backbone: str | None = None, root: str | os.PathLike | None = None) -> Path:
    """Where the run lives: ``<root>/<profile>/<benchmark>/<run_key>/seed<seed>``.

    Args:
        profile, benchmark, method, seed: the run.
        options: method options (``--opt``), exactly as given to the run (types matter).
        backbone: override of the profile's backbone (None, or the profile's own: the profile's).
        root: the store's root (default :func:`store_root`).
    """
    key = run_key(method, options, backbone_override(profile, backbone, method))
    return store_root(root) / profile / benchmark / key / f"seed{int(seed)}"


def eval_key(settings: Mapping[str, Any]) -> str:
    """File stem of an evaluation with these (non-default) settings, e.g. ``oracle_task_idTrue-1a2b...``."""
    settings = dict(settings)
    if not settings:
        return "default"
    return _key("-".join(f"{k}{_short(v)}" for k, v in sorted(settings.items())), settings)


def eval_path(run_folder: str | os.PathLike, settings: Mapping[str, Any]) -> Path:
    """``<run folder>/eval/<eval_key>.json``."""
    return Path(run_folder) / "eval" / f"{eval_key(settings)}.json"
