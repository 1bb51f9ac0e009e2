"""The book's comparison protocol in one place: which methods meet on which benchmark, on which seeds.

1. **Tune** (:func:`cl_peft_lib.tuning.tune_plan`): every method with a search space gets the same
   budget of configurations on the tuning seed, scored on validation data.
2. **Tuned head-to-head**: each method's selection on fresh seeds (:data:`SEEDS`), scored on test.
3. **Reference defaults**: the paper's swap (L2P/L2L, S-Prompts/S-LoRA, plain LoRA, DualPrompt) at the
   methods' published defaults on the same seeds, the view that the paper itself compares.

Everything goes through the run store, so a chapter that asks for these runs reuses them, and
:func:`head_to_head` reads them back. ``cl-peft protocol`` runs all three steps; with a time limit it
stops starting runs and the same command later does only what is missing.

Chapters: ``notebooks/05_head_to_head.ipynb`` (the tuned and default views), ``notebooks/06_ablations.ipynb``
(the tuning trials as validation curves), ``notebooks/08_after_the_swap.ipynb`` (the methods after 2022).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .tuning import BUDGET, SEARCH_SPACES, TUNE_SEEDS, tune_plan, tuned_cells

#: Fresh seeds of the head-to-head (class orders, data subsets, initialisations); never tuning seeds.
SEEDS = (0, 1, 2, 3, 4)
#: The pairs the paper compares: (prompt method, its LoRA swap).
PAIRS = (("l2p", "l2l"), ("sprompts", "slora"))
#: The methods after the paper (chapter 8).
AFTER = ("coda", "ranpac", "inflora", "sdlora")

_CIL = ["ncm", "joint", "finetune", "linear_probe", "lora", "l2p", "dualprompt", "l2l", *AFTER]
_DIL = ["ncm", "joint", "finetune", "linear_probe", "lora", "sprompts", "slora", "inflora", "sdlora"]
#: Per profile: ``{benchmark: [methods]}`` of the head-to-head.
PLANS: dict[str, dict[str, list[str]]] = {
    "offline": {"offline-cil": _CIL, "offline-dil": _DIL},
    "paper": {"split-cifar100": _CIL, "core50": _DIL},
    # CI: the paper's swap and one baseline, two seeds (pairs need two), two configurations per space
    "smoke": {"offline-cil": ["ncm", "l2p", "l2l"], "offline-dil": ["ncm", "sprompts", "slora"]},
}
#: The domain-incremental benchmarks (the others are class-incremental).
DOMAIN_BENCHMARKS = frozenset({"offline-dil", "core50", "domainnet"})
#: Methods shown at their reference defaults (third view), per scenario.
DEFAULTS_VIEW = {"class": ["lora", "l2p", "dualprompt", "l2l"], "domain": ["lora", "sprompts", "slora"]}
#: Seeds and search-space size per profile (the smoke profile keeps CI short; every method the same size).
SETTINGS: dict[str, dict[str, Any]] = {
    "offline": {"seeds": SEEDS, "budget": BUDGET},
    "paper": {"seeds": SEEDS, "budget": BUDGET},
    "smoke": {"seeds": (0, 1), "budget": 2},
}


def plan(profile: str, methods: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The head-to-head's ``{benchmark: [methods]}`` under ``profile`` (only ``methods``, when given).

    Raises:
        KeyError: no protocol for ``profile``. ValueError: a name in ``methods`` is in no benchmark's plan.
    """
    if profile not in PLANS:
        raise KeyError(f"no protocol for profile '{profile}'; profiles with one: {', '.join(PLANS)}")
    full = {b: list(ms) for b, ms in PLANS[profile].items()}
    if methods is None:
        return full
    known = list(dict.fromkeys(m for ms in full.values() for m in ms))
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise ValueError(f"--methods {','.join(methods) or '(empty)'}: {', '.join(bad) or 'no method'} not in the "
                         f"{profile} protocol; valid: {', '.join(known)} "
                         f"(or '{PAPER_SCOPE}': all but {', '.join(AFTER)})")
    return {b: kept for b, ms in full.items() if (kept := [m for m in ms if m in methods])}


#: ``--methods`` shorthand: the methods of the paper's comparison, without the methods after it (:data:`AFTER`)
PAPER_SCOPE = "paper-methods"


def parse_methods(spec: str | None, profile: str) -> list[str] | None:
    """``--methods``: None (the whole plan), a comma-separated list, or :data:`PAPER_SCOPE`."""
    if spec is None:
        return None
    if spec == PAPER_SCOPE:
        return [m for m in dict.fromkeys(m for ms in plan(profile).values() for m in ms) if m not in AFTER]
    return [m for m in (x.strip() for x in spec.split(",")) if m]


def tuning_plan(profile: str, methods: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The methods that have a search space, per benchmark (``ncm`` and ``joint`` have nothing to select)."""
    return {b: tuned for b, ms in plan(profile, methods).items() if (tuned := [m for m in ms if m in SEARCH_SPACES])}


def spaces(profile: str) -> dict[str, list[dict[str, Any]]]:
    """The search spaces under ``profile``: :data:`~cl_peft_lib.tuning.SEARCH_SPACES`, each cut to the profile's
    budget (its first configurations; the same size for every method)."""
    k = SETTINGS[profile]["budget"]
    return {m: list(s[:k]) for m, s in SEARCH_SPACES.items()}


def defaults_plan(profile: str, methods: Sequence[str] | None = None) -> dict[str, list[str]]:
    """The third view's ``{benchmark: [methods]}``: the swap at the methods' reference defaults."""
    return {b: [m for m in DEFAULTS_VIEW["domain" if b in DOMAIN_BENCHMARKS else "class"] if m in ms]
            for b, ms in plan(profile, methods).items()}


def run_protocol(profile: str, root: str | Path | None = None, gpus: Sequence[int] | str | None = None,
                 workers: int | None = None, deadline: float | None = None,
                 log: Callable[[str], None] | None = print, methods: Sequence[str] | None = None) -> dict[str, Any]:
    """Tune, then the tuned head-to-head and the reference-defaults view, all in the run store.

    ``methods`` restricts every step to those methods (:func:`plan`); the timing log records the restriction.

    Returns:
        ``{"selections": {benchmark: {method: selection}}, "grid": the head-to-head grid summary}``; with a
        ``deadline`` some runs may be ``not started`` (``grid["counts"]["not_started"]``).
    """
    import time

    from .grid import Cell, longest_first, run_cells

    say = log or (lambda s: None)
    st = SETTINGS[profile]
    t0 = time.perf_counter()
    grids: list[dict] = []

    def tune_grid(cells, **kw):
        grids.append(run_cells(cells, **kw))
        return grids[-1]

    methods = None if methods is None else list(methods)
    tplan = tuning_plan(profile, methods)
    sels = tune_plan(tplan, profile, TUNE_SEEDS, st["budget"], spaces(profile), root,
                     run=tune_grid, gpus=gpus, workers=workers, deadline=deadline, log=None) if tplan else {}
    t_tune = time.perf_counter() - t0
    n_sel = sum(len(v) for v in sels.values())
    n_want = sum(len(v) for v in tplan.values())
    say(f"protocol: {n_sel} of {n_want} selections stored ({t_tune:.0f} s)")
    if n_sel < n_want:
        _log_timing(profile, root, t_tune, grids[0] if grids else None, None, methods)
        return {"selections": sels, "grid": None, "complete": False}
    cells = tuned_cells(plan(profile, methods), st["seeds"], profile, root)
    n_tuned = len(cells)
    tuned = {(c.method, c.benchmark, c.seed, json.dumps(dict(c.options), sort_keys=True, default=str)) for c in cells}
    for b, ms in defaults_plan(profile, methods).items():
        for m in ms:
            for s in st["seeds"]:
                key = (m, b, int(s), "{}")
                if key not in tuned:
                    cells.append(Cell(m, b, int(s), {}))
    # the tuned head-to-head before the defaults view, each longest run first (the slots then end together)
    cells = longest_first(cells[:n_tuned], profile) + longest_first(cells[n_tuned:], profile)
    g = run_cells(cells, profile, root, gpus, workers, log=say, deadline=deadline)
    _log_timing(profile, root, t_tune, grids[0] if grids else None, g, methods)
    return {"selections": sels, "grid": g, "complete": not g["counts"]["not_started"] and not g["counts"]["failed"]}


def timing_path(profile: str, root: str | Path | None = None) -> Path:
    """Where ``cl-peft protocol`` logs the wall time of each of its invocations under ``profile``."""
    from .store import store_root

    return store_root(root) / profile / "protocol_timing.json"


def _log_timing(profile: str, root: str | Path | None, tune_s: float, tune_grid: dict | None,
                grid: dict | None, methods: Sequence[str] | None = None) -> None:
    """Append this invocation's wall times and run counts to :func:`timing_path` (with ``methods`` when the
    protocol was restricted to them)."""
    import datetime as _dt

    from .utils import atomic_write_json

    def ran(g):
        return 0 if g is None else g["counts"]["ran"]

    slots = (grid or tune_grid or {}).get("config", {}).get("slots")
    entry = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
             "tune_wall_s": round(tune_s, 1), "tune_runs": ran(tune_grid),
             "head_to_head_wall_s": None if grid is None else grid["wall_s"], "head_to_head_runs": ran(grid),
             "failed": sum(g["counts"]["failed"] for g in (tune_grid, grid) if g), "slots": slots}
    if methods is not None:
        entry["methods"] = list(methods)
    p = timing_path(profile, root)
    try:
        log = json.loads(p.read_text())
    except (OSError, ValueError):
        log = []
    atomic_write_json(p, [*log, entry])


def timing_summary(timing: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None) -> dict[str, Any]:
    """The protocol's total wall time over the logged invocations (:func:`timing_path`, or a bundle's
    ``timing``): ``{"wall_s", "invocations", "runs", "tune_runs", "head_to_head_runs", "slots"}``;
    ``wall_s`` sums the tuning and head-to-head grids of every invocation that ran something; ``slots``
    lists the distinct numbers of runs at a time, ``date`` the day of the last one. Only the invocations of
    the whole plan count, or, with ``methods``, those restricted to exactly these methods (``--methods``)."""
    scope = None if methods is None else list(methods)
    used = [t for t in timing
            if (t.get("tune_runs") or t.get("head_to_head_runs")) and t.get("methods") == scope]
    wall = sum(t["tune_wall_s"] + (t.get("head_to_head_wall_s") or 0) for t in used)
    tr, hr = sum(t.get("tune_runs", 0) for t in used), sum(t.get("head_to_head_runs", 0) for t in used)
    dates = sorted(t["date"][:10] for t in used if t.get("date"))
    return {"wall_s": round(wall, 1), "invocations": len(used), "runs": tr + hr, "tune_runs": tr,
            "head_to_head_runs": hr, "slots": sorted({len(t["slots"]) for t in used if t.get("slots")}),
            "date": dates[-1] if dates else None}


def _results(profile: str, benchmark: str, method: str, seeds: Sequence[int], options: Mapping[str, Any],
             root: str | Path | None, missing: str = "raise") -> list[dict]:
    from .store import run_dir

    out = []
    for s in seeds:
        p = run_dir(profile, benchmark, method, s, dict(options), root=root) / "results.json"
        try:
            res = json.loads(p.read_text())
        except FileNotFoundError:
            res = None
        if not res or res.get("status") != "complete":
            if missing == "skip":
                continue
            raise FileNotFoundError(f"{p} is missing or not complete: run `cl-peft protocol --profile {profile}` "
                                    f"(or import the committed results, `cl-peft protocol --import FILE`) first")
        out.append(res)
    return out


def head_to_head(profile: str, view: str = "tuned", root: str | Path | None = None, missing: str = "raise"
                 ) -> dict[str, dict[str, list[dict]]]:
    """The finished runs of one view, ``{benchmark: {method: [results.json per seed]}}``.

    Args:
        view: ``"tuned"`` (each method at its selection) or ``"defaults"`` (the swap at reference defaults).
        missing: ``"raise"`` (a missing run is an error naming the command) or ``"skip"`` (only finished seeds;
            ``{}`` for a profile without a protocol, e.g. ``laptop`` or ``colab``, whose chapters then read the
            packaged offline results).
    """
    from .tuning import selected_options

    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}")
    if profile not in SETTINGS and missing == "skip":
        return {}
    plan(profile)  # a profile without a protocol: the KeyError that names those with one
    seeds = SETTINGS[profile]["seeds"]
    if view == "tuned":
        from .tuning import TuningError

        out: dict[str, dict[str, list[dict]]] = {}
        for b, ms in plan(profile).items():
            for m in ms:
                try:
                    opts = selected_options(profile, b, m, root) if m in SEARCH_SPACES else {}
                except TuningError:
                    if missing == "raise":
                        raise
                    out.setdefault(b, {})[m] = []  # not tuned yet: no runs of its selection
                    continue
                out.setdefault(b, {})[m] = _results(profile, b, m, seeds, opts, root, missing)
        return out
    if view == "defaults":
        return {b: {m: _results(profile, b, m, seeds, {}, root, missing) for m in ms}
                for b, ms in defaults_plan(profile).items()}
    raise ValueError(f"unknown view '{view}'; valid: tuned, defaults")


def selections(profile: str, root: str | Path | None = None) -> dict[str, dict[str, dict]]:
    """The stored tuning selections (with every trial), ``{benchmark: {method: selection}}``; absent ones left out."""
    from .tuning import TuningError, load_selection

    out: dict[str, dict[str, dict]] = {}
    for b, ms in tuning_plan(profile).items():
        for m in ms:
            try:
                out.setdefault(b, {})[m] = load_selection(profile, b, m, root)
            except TuningError:
                pass
    return out


BUNDLE_SCHEMA = "cl-peft-protocol/1"


def export_bundle(profile: str, path: str | Path, root: str | Path | None = None,
                  views: Sequence[str] = ("tuned", "defaults")) -> dict[str, int]:
    """Write the protocol's selections and every finished head-to-head run of ``views`` to one JSON file,
    the results a reader can load instead of training (:func:`import_bundle`). Returns the counts written.
    ``views=("defaults",)`` writes the reference-defaults view alone, with no selections: a store that starts
    from it re-tunes everything (how the protocol's wall time was measured, the defaults view carried over)."""
    from .utils import atomic_write_json

    runs = []
    for view in views:
        for b, per in head_to_head(profile, view, root, missing="skip").items():
            for m, rs in per.items():
                runs += rs
    uniq = {(r["method"], r["benchmark"], r["seed"], r.get("store_key")): r for r in runs}
    sels = selections(profile, root) if "tuned" in views else {}
    try:
        timing = json.loads(timing_path(profile, root).read_text())
    except (OSError, ValueError):
        timing = []
    atomic_write_json(path, {"schema": BUNDLE_SCHEMA, "profile": profile, "selections": sels,
                             "runs": list(uniq.values()), "timing": timing})
    return {"selections": sum(len(v) for v in sels.values()), "runs": len(uniq)}


def import_bundle(path: str | Path, root: str | Path | None = None) -> dict[str, int]:
    """Place an :func:`export_bundle` file's selections and runs in the run store (no training, no data).

    Each run goes through :func:`cl_peft_lib.imports.place_result` (schema, completeness, store key; a folder
    holding another run is refused); fingerprints are not recomputed (that would build every run).
    """
    from .imports import ImportResultError, place_result
    from .utils import atomic_write_json

    try:
        d = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ImportResultError(f"{path}: not a readable protocol bundle ({e})") from None
    if not isinstance(d, dict) or d.get("schema") != BUNDLE_SCHEMA:
        raise ImportResultError(f"{path}: not a protocol bundle (schema {BUNDLE_SCHEMA})")
    from .tuning import selection_path

    n_sel = 0
    for b, per in d["selections"].items():
        for m, sel in per.items():
            atomic_write_json(selection_path(d["profile"], b, m, root), sel)
            n_sel += 1
    for r in d["runs"]:
        place_result(r, f"{path}", root, verify=False)
    return {"selections": n_sel, "runs": len(d["runs"])}


def per_seed(results: Sequence[dict], metric: str = "average_accuracy") -> dict[int, float]:
    """``{seed: metric}`` of a method's runs (for :func:`cl_peft_lib.stats.paired`)."""
    return {int(r["seed"]): float(r["metrics"][metric]) for r in results}
