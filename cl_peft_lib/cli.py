"""Command line: ``cl-peft run|evaluate|grid|tune|protocol|list|import|data export``.

Examples::

    cl-peft run --method l2p --benchmark offline-cil --profile smoke --seed 0
    cl-peft evaluate --method sprompts --benchmark offline-dil --eval oracle_task_id=true   # no retraining
    torchrun --nproc_per_node 2 -m cl_peft_lib run --method l2p --benchmark domainnet --profile paper
    cl-peft grid --methods l2p,dualprompt --benchmarks offline-cil --seeds 0,1,2
    cl-peft tune --methods l2p,l2l --benchmark offline-cil --profile offline
    cl-peft list

Runs live in the run store (:mod:`cl_peft_lib.store`, root ``--root`` / ``$CL_PEFT_RUNS`` / ``runs``).

Chapter: README (``cli.py``: the commands).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import check_out_dir, parse_opts
from .store import run_dir


def _error(msg: object) -> int:
    """Print ``error: msg`` once (rank 0 under torchrun) and return the CLI's usage-error code 2."""
    from .distributed import env_rank

    if env_rank() == 0:  # under torchrun every rank meets the same error; say it once
        print(f"error: {msg}", file=sys.stderr)
    return 2


def _message(e: BaseException) -> object:
    return e.args[0] if isinstance(e, KeyError) and e.args else e


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="cl-peft", description="Continual learning with PEFT of pretrained ViTs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one method on one benchmark")
    r.add_argument("--method", required=True)
    r.add_argument("--benchmark", required=True)
    r.add_argument("--profile", default=None, help="smoke | offline | laptop | colab | paper (default: $CL_PEFT_PROFILE or offline)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: $CL_PEFT_DEVICE, else auto)")
    r.add_argument("--backbone", default=None, help="override the profile's backbone")
    r.add_argument("--root", default=None, help="run store root (default: $CL_PEFT_RUNS or runs)")
    r.add_argument("--out", default=None, help="results folder (default: the run's folder in the run store, "
                                                "<root>/<profile>/<benchmark>/<key>/seed<seed>)")
    r.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method config field, e.g. --opt lr=0.01 --opt top_n=3")
    r.add_argument("--no-resume", action="store_true",
                   help="start from scratch: ignore and overwrite what the folder holds")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    e = sub.add_parser("evaluate", help="score a finished run under other evaluation settings (never retrains)")
    for flag in ("--method", "--benchmark"):
        e.add_argument(flag, required=True)
    for flag, kw in (("--profile", {}), ("--seed", {"type": int, "default": 0}), ("--device", {}),
                     ("--backbone", {}), ("--root", {}), ("--out", {})):
        e.add_argument(flag, **({"default": None} | kw))
    e.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="the run's method options")
    e.add_argument("--eval", action="append", default=[], metavar="KEY=VALUE",
                   help="evaluation setting: split=val, mask_unseen, oracle_task_id, merged_inference, "
                        "batchwise_selection (e.g. --eval oracle_task_id=true)")
    g = sub.add_parser("grid", help="run methods x benchmarks x seeds, spread over GPUs or CPU processes")
    g.add_argument("--methods", required=True, help="comma-separated, e.g. l2p,dualprompt")
    g.add_argument("--benchmarks", required=True, help="comma-separated, e.g. offline-cil,offline-dil")
    g.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    g.add_argument("--profile", default=None, help="smoke | offline | laptop | colab | paper (default: $CL_PEFT_PROFILE or offline)")
    g.add_argument("--root", default=None, help="run store root (default: $CL_PEFT_RUNS or runs)")
    g.add_argument("--summary", default=None, help="grid summary JSON (default <root>/<profile>/grids/<key>.json)")
    g.add_argument("--gpus", default=None, help="GPU indices among the visible ones (default: all visible)")
    g.add_argument("--workers", type=int, default=None, help="parallel CPU processes (when no GPU is used)")
    g.add_argument("--backbone", default=None, help="override the profile's backbone")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option for every run")
    g.add_argument("--tuned", action="store_true",
                   help="each method with the options `cl-peft tune` selected for the benchmark (methods without "
                        "a search space at their defaults); the seeds must not be tuning seeds")
    g.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no run after this many seconds (runs in flight finish; exit code 3 if some did not start)")
    t = sub.add_parser("tune", help="select each method's settings on validation data, equal budgets")
    t.add_argument("--methods", required=True, help="comma-separated, e.g. l2p,l2l")
    t.add_argument("--benchmark", required=True, help="a benchmark, or several comma-separated (one grid for all)")
    t.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="start no trial after this many seconds (exit code 3 if some did not start)")
    t.add_argument("--profile", default=None, help="smoke | offline | laptop | colab | paper (default: $CL_PEFT_PROFILE or offline)")
    t.add_argument("--seeds", default=None, help="tuning seeds, comma-separated (default: cl_peft_lib.tuning.TUNE_SEEDS)")
    t.add_argument("--root", default=None, help="run store root (default: $CL_PEFT_RUNS or runs)")
    t.add_argument("--gpus", default=None, help="GPU indices among the visible ones")
    t.add_argument("--workers", type=int, default=None, help="parallel CPU processes (when no GPU is used)")
    t.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="option added to every configuration (e.g. epochs=1 for a quick look)")
    pr = sub.add_parser("protocol", help="the book's comparison: tune every method (equal budgets, validation), "
                                         "then the tuned head-to-head and the reference defaults on fresh seeds")
    pr.add_argument("--profile", default=None, help="smoke | offline | laptop | colab | paper (default: $CL_PEFT_PROFILE or offline)")
    pr.add_argument("--root", default=None, help="run store root (default: $CL_PEFT_RUNS or runs)")
    pr.add_argument("--gpus", default=None, help="GPU slots, e.g. 0,0,0,0,0,0,0,0 (8 runs at a time on GPU 0)")
    pr.add_argument("--workers", type=int, default=None, help="parallel CPU processes (when no GPU is used)")
    pr.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                    help="start no run after this many seconds (exit code 3 if some did not start; run it again)")
    pr.add_argument("--methods", default=None, metavar="M1,M2",
                    help="only these methods of the plan, or 'paper-methods' (all but the methods after the paper); "
                         "the timing log records the restriction")
    pr.add_argument("--export", default=None, metavar="FILE",
                    help="write the selections and finished head-to-head runs to FILE (no training)")
    pr.add_argument("--import", dest="import_", default=None, metavar="FILE",
                    help="place an exported FILE's selections and runs in the run store (no training)")
    sub.add_parser("list", help="list methods, benchmarks, profiles and backbones")
    # --- cl-peft import (cl_peft_lib.imports) ---
    im = sub.add_parser("import", help="place a results.json made elsewhere in the run store (no training)")
    im.add_argument("file", help="path or http(s) URL of a run's results.json")
    im.add_argument("--root", default=None, help="run store root (default: $CL_PEFT_RUNS or runs)")
    im.add_argument("--no-verify", action="store_true", help="skip building the run to compare fingerprints")
    # --- end cl-peft import ---
    d = sub.add_parser("data", help="offline data utilities")
    d.add_argument("action", choices=["export"])
    d.add_argument("dest")
    a = p.parse_args(argv)

    if a.cmd == "list":
        from .backbones import BACKBONES
        from .data.scenarios import BENCHMARKS
        from .methods import METHODS
        from .profiles import PROFILES

        for title, names in (("methods", METHODS), ("benchmarks", BENCHMARKS), ("profiles", PROFILES),
                             ("backbones", BACKBONES)):
            print(f"{title}: {', '.join(names)}")
        return 0
    if a.cmd == "data":
        from .data.offline import export_offline_data

        print(f"exported to {export_offline_data(a.dest)}; set CL_PEFT_OFFLINE_DATA={a.dest} on the other machine")
        return 0
    if a.cmd == "grid":
        return _grid(a)
    if a.cmd == "tune":
        return _tune(a)
    if a.cmd == "protocol":
        return _protocol(a)
    if a.cmd == "evaluate":
        return _evaluate(a)
    if a.cmd == "import":  # --- cl-peft import ---
        from .data.base import DatasetNotFoundError
        from .imports import import_results

        try:
            print(f"imported -> {import_results(a.file, a.root, verify=not a.no_verify)}")
        except (KeyError, ValueError, DatasetNotFoundError) as e:
            return _error(_message(e))
        return 0

    from .data.base import DatasetNotFoundError
    from .distributed import env_rank
    from .loop import CheckpointError, NonFiniteLossError, RunConfig, run_continual
    from .metrics import format_matrix
    from .profiles import get_profile

    try:
        opts = parse_opts(a.opt)
        profile = get_profile(a.profile)
        out = a.out or str(run_dir(profile.name, a.benchmark, a.method, a.seed, opts, a.backbone, a.root))
        check_out_dir(out)  # before training: a file in the way would lose the results at the end
        cfg = RunConfig(a.method, a.benchmark, profile.name, a.seed, a.device, out, opts, a.backbone,
                        resume=not a.no_resume, progress=not a.quiet)
        res = run_continual(cfg)
    except (KeyError, ValueError, DatasetNotFoundError, FileNotFoundError, CheckpointError, NonFiniteLossError) as e:
        return _error(_message(e))
    if env_rank() != 0:  # under torchrun, rank 0 alone prints the summary
        return 0
    print(f"{res['method']} on {res['benchmark']} ({res['scenario']}-incremental), profile {res['profile']}, "
          f"seed {res['seed']}, backbone {res['provenance']['backbone']}, {res['provenance']['device']}")
    print(f"trainable parameters: {res['trainable_params']:,}")
    print("accuracy matrix R[t][i] (%):")
    print(format_matrix(res["accuracy_matrix"], res["task_names"]))
    if res.get("task_id_accuracy"):
        print("task-identification accuracy (%), last row:", " ".join(f"{v:.1f}" for v in res["task_id_accuracy"][-1]))
    m = res["metrics"]
    print(f"average accuracy {m['average_accuracy']:.2f} | average incremental accuracy "
          f"{m['average_incremental_accuracy']:.2f} | forgetting {m['forgetting']:.2f} | BWT {m['backward_transfer']:.2f}")
    print(f"results: {Path(out) / 'results.json'}")
    return 0


def _grid(a: argparse.Namespace) -> int:
    """``cl-peft grid``: every check that needs no run comes before the first run starts."""
    from .grid import run_grid

    try:
        opts = parse_opts(a.opt)
        if a.workers is not None and a.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {a.workers}")
        if a.gpus is not None:
            import torch

            if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
                raise ValueError(f"--gpus {a.gpus}: no CUDA GPU is visible on this machine; leave --gpus out "
                                 f"(or give --workers N) to run on CPU processes")
        if a.root:
            check_out_dir(a.root, "--root")
        deadline = time.time() + a.time_limit if a.time_limit is not None else None
        if a.tuned:
            from .grid import parse_list, run_cells
            from .tuning import tuned_cells

            if opts:
                raise ValueError("--tuned takes each method's options from its selection; leave --opt out")
            plan = {b: parse_list(a.methods) for b in parse_list(a.benchmarks)}
            cells = tuned_cells(plan, [int(x) for x in parse_list(a.seeds)], a.profile, a.root)
            grid = run_cells(cells, a.profile, a.root, a.gpus, a.workers, a.backbone, summary=a.summary,
                             deadline=deadline)
        else:
            grid = run_grid(a.methods, a.benchmarks, a.seeds, a.profile, a.root, a.gpus, a.workers, a.backbone,
                            opts, summary=a.summary, deadline=deadline)
    except (KeyError, ValueError) as e:
        return _error(_message(e))
    return 1 if grid["counts"]["failed"] else 3 if grid["counts"].get("not_started") else 0


def _evaluate(a: argparse.Namespace) -> int:
    """``cl-peft evaluate``: a finished run scored under other evaluation settings, stored beside it."""
    from .data.base import DatasetNotFoundError
    from .evaluation import EvalConfig
    from .loop import CheckpointError, RunConfig, evaluate_run
    from .profiles import get_profile

    try:
        opts, settings = parse_opts(a.opt), EvalConfig.from_dict(parse_opts(a.eval))
        profile = get_profile(a.profile)
        out = a.out or str(run_dir(profile.name, a.benchmark, a.method, a.seed, opts, a.backbone, a.root))
        rec = evaluate_run(RunConfig(a.method, a.benchmark, profile.name, a.seed, a.device, out, opts, a.backbone,
                                     progress=False), settings)
    except (KeyError, ValueError, DatasetNotFoundError, FileNotFoundError, CheckpointError) as e:
        return _error(_message(e))
    print(f"{a.method} on {a.benchmark}, seed {a.seed}, after task {rec['after_task']}, "
          f"settings {settings.changes() or 'default'}:")
    print("accuracy per task (%): " + " ".join(f"{v:.1f}" for v in rec["accuracy"]))
    if rec.get("task_id_accuracy"):
        print("task-identification accuracy (%): " + " ".join(f"{v:.1f}" for v in rec["task_id_accuracy"]))
    print(f"average accuracy {rec['average_accuracy']:.2f}")
    return 0


def _tune(a: argparse.Namespace) -> int:
    """``cl-peft tune``: every check (spaces, budget, options, seeds) before the first run."""
    from .grid import parse_list
    from .tuning import TUNE_SEEDS, TuningError, selection_path, tune_plan

    try:
        seeds = [int(s) for s in parse_list(a.seeds)] if a.seeds else list(TUNE_SEEDS)
        methods = parse_list(a.methods)
        plan = {b: methods for b in parse_list(a.benchmark)}
        deadline = time.time() + a.time_limit if a.time_limit is not None else None
        sels = tune_plan(plan, a.profile, seeds, root=a.root, base_options=parse_opts(a.opt), gpus=a.gpus,
                         workers=a.workers, deadline=deadline)
    except (KeyError, ValueError, TuningError) as e:
        return _error(_message(e))
    missing = 0
    for b in plan:
        for m in methods:
            s = sels.get(b, {}).get(m)
            if s is None:
                missing += 1
                print(f"{m} on {b}: not all trials ran (time limit); run the same command again")
                continue
            print(f"{m} on {b}: selected {s['selected']} (validation A_T {s['selected_val_average_accuracy']:.2f}) -> "
                  f"{selection_path(s['profile'], b, m, a.root)}")
    return 3 if missing else 0


def _protocol(a: argparse.Namespace) -> int:
    """``cl-peft protocol``: tune, then both views of the head-to-head (:mod:`cl_peft_lib.protocol`)."""
    from .grid import format_summary
    from .profiles import get_profile
    from .protocol import parse_methods, plan, run_protocol
    from .tuning import TuningError

    try:
        profile = get_profile(a.profile).name
        methods = parse_methods(a.methods, profile)
        plan(profile, methods)  # an unknown profile or method fails here, before any data loads
        if a.root:
            check_out_dir(a.root, "--root")
        if a.export or a.import_:
            from .protocol import export_bundle, import_bundle

            n = export_bundle(profile, a.export, a.root) if a.export else import_bundle(a.import_, a.root)
            print(f"{'exported to ' + a.export if a.export else 'imported from ' + a.import_}: "
                  f"{n['selections']} selections, {n['runs']} runs")
            return 0
        deadline = time.time() + a.time_limit if a.time_limit is not None else None
        out = run_protocol(profile, a.root, a.gpus, a.workers, deadline, log=print, methods=methods)
    except (KeyError, ValueError, TuningError) as e:
        return _error(_message(e))
    for b, sels in out["selections"].items():
        for m, s in sels.items():
            print(f"tuned {m} on {b}: {s['selected']} (validation A_T {s['selected_val_average_accuracy']:.2f})")
    if out["grid"] is None:
        print("the time limit came before tuning finished; run the same command again")
        return 3
    if out["grid"]["counts"]["failed"]:
        return 1
    return 0 if out["complete"] else 3


if __name__ == "__main__":
    sys.exit(main())
