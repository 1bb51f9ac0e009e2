"""Train or load: place a ``results.json`` someone else produced in the run store.

A chapter on the paper track needs hours of GPU time per run. :func:`import_results` takes a
finished run's ``results.json`` (a path or an http(s) URL), validates it with
:class:`cl_peft_lib.results.RunResult`, and writes it to the folder its settings map to
(:func:`cl_peft_lib.store.run_dir`), with ``provenance["imported_from"]`` naming the source.
The producer's ``fingerprint`` is kept: a re-run of the same settings then finds a complete
result of its own fingerprint and says "finished: nothing to do" instead of training
(:meth:`cl_peft_lib.loop.Runner.finished_result`). With ``verify=True`` (the default) the local
fingerprint (this library version, these data, this backbone's weights) is computed first and
a mismatch is refused; without verification the loop itself refuses a foreign complete result
at re-run time (it never silently reuses one).

Chapter: ``book/appendix_paper_track.md`` (the paper-scale track).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .results import ResultSchemaError, RunResult
from .store import run_dir


class ImportResultError(ValueError):
    """A results file that cannot be imported (unreadable, incomplete, foreign, or in the way)."""


def _read_source(source: str | os.PathLike) -> Any:
    """The JSON object at ``source`` (a local path or an http(s) URL)."""
    src = str(source)
    try:
        if src.startswith(("http://", "https://")):
            with urllib.request.urlopen(src, timeout=60) as r:  # noqa: S310 - http(s) only, checked above
                text = r.read().decode("utf-8")
        else:
            text = Path(src).read_text()
    except (OSError, urllib.error.URLError, UnicodeDecodeError) as e:
        raise ImportResultError(f"cannot read {src} ({type(e).__name__}: {e}); check the path or URL") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ImportResultError(f"{src} is not JSON ({e}); pass a run's results.json") from None


def local_fingerprint(res: RunResult, device: str = "cpu") -> str:
    """The fingerprint this machine gives ``res``'s settings (builds the run: data and backbone load, nothing trains)."""
    from .loop import RunConfig, Runner

    cfg = RunConfig(res.method, res.benchmark, res.profile, res.seed, device, None,
                    dict(res.run.get("method_options") or {}), res.run.get("backbone"), progress=False)
    return Runner(cfg).fingerprint()


def import_results(source: str | os.PathLike, root: str | os.PathLike | None = None, verify: bool = True,
                   device: str = "cpu") -> Path:
    """Place the complete run at ``source`` in the run store; return the ``results.json`` written.

    Args:
        source: path or http(s) URL of a ``results.json``.
        root: the run store's root (default :func:`cl_peft_lib.store.store_root`).
        verify: compute the local fingerprint of the run's settings first and refuse a mismatch.
        device: where the verification builds the run.

    Raises:
        ImportResultError: (a ``ValueError``) unreadable, schema-invalid, not complete, no
            fingerprint, a fingerprint this library does not give these settings, a store key
            other than the folder the settings map to, or a different run already in that folder.
    """
    return place_result(_read_source(source), source, root, verify, device)


def place_result(d: Any, source: str | os.PathLike, root: str | os.PathLike | None = None, verify: bool = True,
                 device: str = "cpu") -> Path:
    """:func:`import_results` of a results dict already read (``source`` names where it came from)."""
    try:
        res = RunResult.from_dict(d, source=source)
    except ResultSchemaError as e:
        raise ImportResultError(f"not a valid results.json: {e}") from None
    if res.status != "complete":
        raise ImportResultError(f"{source}: the run is {res.status!r}, only complete runs can be imported")
    if not res.fingerprint:
        raise ImportResultError(f"{source}: no fingerprint (made by an older cl_peft_lib); re-run it instead")
    # JSON has no tuples: sequences come back as lists, options hold them as tuples (as tuning.selected_options)
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in (res.run.get("method_options") or {}).items()}
    dest = run_dir(res.profile, res.benchmark, res.method, res.seed, options=opts, backbone=res.run.get("backbone"),
                   root=root)
    if res.store_key is not None and res.store_key != dest.parent.name:
        raise ImportResultError(f"{source}: its store key {res.store_key!r} is not {dest.parent.name!r}, the folder its "
                                f"settings map to here (options changed type through JSON, or another library version)")
    if verify:
        mine = local_fingerprint(res, device)
        if mine != res.fingerprint:
            raise ImportResultError(f"{source}: its fingerprint {res.fingerprint[:12]} differs from this machine's "
                                    f"{mine[:12]} for the same settings (another library version, data or backbone "
                                    f"weights); train the run here instead of importing it")
    path = dest / "results.json"
    if path.exists():
        try:
            there = json.loads(path.read_text())
        except ValueError:
            there = None
        if not (isinstance(there, dict) and there.get("fingerprint") == res.fingerprint):
            raise ImportResultError(f"{path} already holds another run; move it away first")
    res.provenance = {**res.provenance, "imported_from": str(source)}
    res.save(path)
    return path
