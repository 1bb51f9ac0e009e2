"""Command line: ``cl-peft run``, ``cl-peft grid``, ``cl-peft list``, ``cl-peft data export``.

Examples::

    cl-peft run --method l2p --benchmark offline-cil --profile smoke --seed 0
    cl-peft run --method sprompts --benchmark offline-dil --opt oracle_task_id=true
    torchrun --nproc_per_node 2 -m cl_peft_lib run --method l2p --benchmark domainnet --profile paper
    cl-peft grid --methods l2p,dualprompt --benchmarks offline-cil --seeds 0,1,2 --out runs/grid
    cl-peft list

Chapter: ``notebooks/01_continual_learning.ipynb``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import check_out_dir, parse_opts


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
    r.add_argument("--profile", default=None, help="smoke | offline | paper (default: $CL_PEFT_PROFILE or offline)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N (default: $CL_PEFT_DEVICE, else auto)")
    r.add_argument("--backbone", default=None, help="override the profile's backbone")
    r.add_argument("--out", default=None, help="results folder (default runs/<benchmark>/<method>/seed<seed>)")
    r.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="override a method config field, e.g. --opt lr=0.01 --opt top_n=3")
    r.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint (it is overwritten)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    g = sub.add_parser("grid", help="run methods x benchmarks x seeds, spread over GPUs or CPU processes")
    g.add_argument("--methods", required=True, help="comma-separated, e.g. l2p,dualprompt")
    g.add_argument("--benchmarks", required=True, help="comma-separated, e.g. offline-cil,offline-dil")
    g.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    g.add_argument("--profile", default=None, help="smoke | offline | paper (default: $CL_PEFT_PROFILE or offline)")
    g.add_argument("--out", default="runs/grid", help="grid folder (runs in <out>/<benchmark>/<method>/seed<seed>)")
    g.add_argument("--gpus", default=None, help="GPU indices among the visible ones (default: all visible)")
    g.add_argument("--workers", type=int, default=None, help="parallel CPU processes (when no GPU is used)")
    g.add_argument("--backbone", default=None, help="override the profile's backbone")
    g.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE", help="method option for every run")
    sub.add_parser("list", help="list methods, benchmarks, profiles and backbones")
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

    from .data.base import DatasetNotFoundError
    from .distributed import env_rank
    from .loop import CheckpointError, NonFiniteLossError, RunConfig, run_continual
    from .metrics import format_matrix
    from .profiles import get_profile

    try:
        opts = parse_opts(a.opt)
        profile = get_profile(a.profile)
        out = a.out or str(Path("runs") / a.benchmark / a.method / f"seed{a.seed}")
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
        check_out_dir(a.out)
        grid = run_grid(a.methods, a.benchmarks, a.seeds, a.profile, a.out, a.gpus, a.workers, a.backbone, opts)
    except (KeyError, ValueError) as e:
        return _error(_message(e))
    return 1 if grid["counts"]["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
