"""The schema of a run's ``results.json``: one typed record, versioned, read and written in one place.

:class:`RunResult` holds what :meth:`cl_peft_lib.loop.Runner.run` writes (method, benchmark,
scenario, profile, seed, config, provenance, the accuracy matrix, wall times, training logs,
trainable parameters, status, final metrics, ...) plus ``store_key`` (set by the run store)
and ``schema_version`` (:data:`SCHEMA_VERSION`). Files written before the schema had a
version are version 1 and are upgraded in memory when read; a file with an unknown version,
a missing required field or a field of the wrong type is refused with an error naming it.

Example::

    res = load_result("runs/offline/offline-cil/l2p/seed0/results.json")
    res.metrics["average_accuracy"], res.status, res.provenance["device"]
    res.save(path)                       # atomic; writes schema_version

Chapter: README (``results.py``: the schema of every run's results).
"""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

__all__ = ["SCHEMA_VERSION", "STATUSES", "ResultSchemaError", "RunResult", "load_result"]

#: The version :meth:`RunResult.to_dict` writes.
SCHEMA_VERSION = "cl-peft-result/2"
#: Version 1: the files of before the schema (no ``schema_version`` key, no ``store_key``).
_V1 = "cl-peft-result/1"
_READABLE = (_V1, SCHEMA_VERSION)
#: ``running`` (written after every task), ``failed`` (with ``error``), ``complete`` (with ``metrics``).
STATUSES = ("running", "failed", "complete")


class ResultSchemaError(ValueError):
    """A ``results.json`` that does not follow the schema (the message names the file)."""


# field -> accepted JSON types (None: may be null); checked by from_dict / __post_init__
_TYPES: dict[str, tuple[type, ...]] = {
    "method": (str,), "benchmark": (str,), "scenario": (str,), "profile": (str,), "seed": (int,),
    "config": (dict,), "run": (dict,), "provenance": (dict,), "task_names": (list,),
    "class_order": (list, type(None)), "accuracy_matrix": (list,), "task_id_accuracy": (list, type(None)),
    "wall_time_s": (list,), "train_logs": (list,), "trainable_params": (int,), "status": (str,),
    "metrics": (dict, type(None)), "extra": (dict, type(None)), "error": (str, type(None)),
    "resumed_from_task": (int, type(None)), "distributed": (dict, type(None)), "store_key": (str, type(None)),
    "fingerprint": (str, type(None)), "validation": (dict, type(None)), "schema_version": (str,),
}


@dataclass
class RunResult:
    """One run's results (``results.json``), schema :data:`SCHEMA_VERSION`.

    Attributes:
        method: method name (``l2p``, ``slora``, ...).
        benchmark: benchmark name.
        scenario: ``class`` or ``domain``.
        profile: profile name (``smoke``, ``offline``, ``paper``).
        seed: the run's seed.
        config: the method's configuration.
        run: the run configuration (``RunConfig`` as a dict).
        provenance: device, versions, date, commit, backbone, data sets.
        task_names: one name per task.
        class_order: the class permutation (class-incremental), else ``None``.
        accuracy_matrix: ``R[t][i]``, accuracy (%) on task i after task t; one row per finished task.
        task_id_accuracy: per task, accuracy of the task/domain identification (routing methods), else ``None``.
        wall_time_s: per finished task, ``{"train": s, "eval": s}``.
        train_logs: per finished task, the training log.
        trainable_params: number of learned parameters.
        status: one of :data:`STATUSES`.
        metrics: final metrics of :func:`cl_peft_lib.metrics.summarize` (complete runs).
        extra: the method's extra metrics (complete runs).
        error: ``"Type: message"`` of the exception (failed runs).
        resumed_from_task: the checkpoint's last task when the run resumed.
        distributed: world size and backend of a ``torchrun`` run.
        store_key: the run store's key of this run (set by the store).
        fingerprint: hash of the run's identity (method, config, benchmark, profile, seed, backbone
            weights, data); a re-run that finds a complete result with the same fingerprint does nothing.
        validation: ``{"accuracy": [...], "average_accuracy": x}``: the last model on each task's
            validation split (what model selection reads), when the benchmark has one.
        schema_version: :data:`SCHEMA_VERSION`.
    """

    method: str
    benchmark: str
    scenario: str
    profile: str
    seed: int
    config: dict[str, Any]
    run: dict[str, Any]
    provenance: dict[str, Any]
    task_names: list[str]
    class_order: list[int] | None
    accuracy_matrix: list[list[float]]
    task_id_accuracy: list[Any] | None
    wall_time_s: list[dict[str, float]]
    train_logs: list[Any]
    trainable_params: int
    status: str
    metrics: dict[str, float] | None = None
    extra: dict[str, Any] | None = None
    error: str | None = None
    resumed_from_task: int | None = None
    distributed: dict[str, Any] | None = None
    store_key: str | None = None
    fingerprint: str | None = None
    validation: dict[str, Any] | None = None
    schema_version: str = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = _type_problems({f.name: getattr(self, f.name) for f in fields(self)})
        if self.schema_version != SCHEMA_VERSION:
            problems.append(f"schema_version is {self.schema_version!r}, expected {SCHEMA_VERSION!r}")
        if self.status not in STATUSES:
            problems.append(f"status {self.status!r} is not one of {STATUSES}")
        elif self.status == "complete" and self.metrics is None:
            problems.append("a complete run needs metrics")
        elif self.status == "failed" and not self.error:
            problems.append("a failed run needs its error")
        if isinstance(self.accuracy_matrix, list):
            for t, row in enumerate(self.accuracy_matrix):
                if not isinstance(row, list) or len(row) < t + 1:
                    problems.append(f"accuracy_matrix row {t} needs a list of at least {t + 1} accuracies")
                    break
        if problems:
            raise ResultSchemaError("; ".join(problems))

    @classmethod
    def required_fields(cls) -> tuple[str, ...]:
        """Fields every file must have (those without a default)."""
        return tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | os.PathLike | None = None) -> RunResult:
        """Read a ``results.json`` dict; version-1 files (no ``schema_version``) are upgraded in memory.

        Args:
            d: the parsed JSON object.
            source: where it came from (named in errors).

        Raises:
            ResultSchemaError: not an object, an unknown ``schema_version``, a missing required
                field, an unknown field, or a field of the wrong type.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(d, Mapping):
            raise ResultSchemaError(f"{where}a results file holds a JSON object, got {type(d).__name__}")
        d = dict(d)
        version = d.pop("schema_version", _V1)
        if version not in _READABLE:
            raise ResultSchemaError(f"{where}unknown schema_version {version!r} (this library reads "
                                    f"{', '.join(_READABLE)}); a newer cl_peft_lib wrote it?")
        names = {f.name for f in fields(cls)} - {"schema_version"}
        missing = [k for k in cls.required_fields() if k not in d]
        if missing:
            raise ResultSchemaError(f"{where}missing required field(s) {missing} ({version})")
        unknown = sorted(set(d) - names)
        if unknown:
            raise ResultSchemaError(f"{where}unknown field(s) {unknown} for {version}")
        if version == _V1:
            d = _upgrade_v1(d)
        try:
            return cls(**d)
        except ResultSchemaError as e:
            raise ResultSchemaError(f"{where}{e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object to write: ``schema_version`` first, optional fields only when set."""
        d: dict[str, Any] = {"schema_version": self.schema_version}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "schema_version" or (v is None and f.name not in _ALWAYS_WRITTEN):
                continue
            d[f.name] = v
        return d

    def save(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically."""
        from .utils import atomic_write_json

        atomic_write_json(path, self.to_dict())


#: Written even when null (as the loop has always done), so readers may index them.
_ALWAYS_WRITTEN = frozenset({"class_order", "task_id_accuracy"})


def _type_problems(d: Mapping[str, Any]) -> list[str]:
    out = []
    for k, v in d.items():
        ok = _TYPES.get(k)
        if ok is None:
            continue
        if isinstance(v, bool) and bool not in ok or not isinstance(v, ok):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in ok)
            out.append(f"field {k!r} must be {names}, got {type(v).__name__}")
    return out


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """Version 1 -> 2: nothing renamed; ``store_key`` is new (unknown for old files)."""
    return {**d, "store_key": d.get("store_key")}


def load_result(path: str | os.PathLike) -> RunResult:
    """Read and validate one ``results.json``.

    Raises:
        ResultSchemaError: the file is unreadable, not JSON, or not a valid result (the message names it).
    """
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultSchemaError(f"{path}: cannot read a results file ({type(e).__name__}: {e})") from e
    return RunResult.from_dict(d, source=path)
