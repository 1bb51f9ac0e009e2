"""The one continual-learning loop shared by every method.

For each task: ``begin_task``, train (epochs, optimizer and schedule from the
method's config, a tqdm bar), ``end_task``, then evaluate on every task seen so
far, which fills row t of the accuracy matrix ``R``. After each task a
checkpoint and the results JSON are written atomically; a run that was killed
restarts from the last finished task and ends with the identical matrix
(each task reseeds from ``(seed, task)``, so nothing depends on how the run got there).

Launched by ``torchrun --nproc_per_node N``, the same loop trains data-parallel
(:mod:`cl_peft_lib.distributed`: sharded batches, averaged gradients, sharded evaluation,
files written by rank 0); in one process nothing of that is touched.

One optimisation step (optimizer, update, the finite-loss test) is :mod:`cl_peft_lib.step`, re-exported here.

Chapter: ``notebooks/01_continual_learning.ipynb``.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from . import compiling
from . import distributed as D
from .backbones import backbone_spec, create_backbone, state_fingerprint
from .data.base import ConcatImageDataset, has_fast_batches
from .data.scenarios import BENCHMARKS, Scenario, build_benchmark
from .data.transforms import apply_augment, epoch_augment_params, to_model_input
from .evaluation import DEFAULT_EVAL, EvalConfig
from .methods import ContinualMethod, MethodConfig, TaskContext, get_method_class
from .metrics import summarize
from .options import parse_opts
from .profiles import Profile, get_profile
from .results import SCHEMA_VERSION, RunResult
from .store import backbone_override, eval_path, run_key
from .step import (  # noqa: F401 - the loop's step, re-exported: cl_peft_lib.loop.train_step etc.
    LOSS_CHECK_ENV,
    LossWatch,
    NonFiniteLossError,
    build_optimizer,
    loss_check_every,
    non_finite_error,
    optimizer_step,
    train_step,
)
from .utils import amp_dtype, atomic_torch_save, atomic_write_json, autocast, provenance, resolve_device, seed_everything


class CheckpointError(RuntimeError):
    """A checkpoint is unreadable or belongs to another run; it is never silently reused."""


@dataclass
class RunConfig:
    """One continual-learning run.

    Attributes:
        method: key of :data:`cl_peft_lib.methods.METHODS`.
        benchmark: key of :data:`cl_peft_lib.data.scenarios.BENCHMARKS`.
        profile: ``smoke``, ``offline`` or ``paper``.
        seed: fixes class order, subsets, initialisation and data order.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        out_dir: folder for ``results.json`` and ``checkpoint.pt`` (None: nothing written); the
            book and the CLI take it from the run store (:func:`cl_peft_lib.store.run_dir`).
        method_options: overrides of the method's config fields (e.g. ``{"lr": 0.01}``).
        backbone: override of the profile's backbone.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists; a complete run is not
            retrained (False: start from scratch and overwrite what is there).
        progress: show tqdm bars.
    """

    method: str
    benchmark: str
    profile: str = "offline"
    seed: int = 0
    device: str = "auto"
    out_dir: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    resume: bool = True
    progress: bool = True


def method_config(method: str, profile: Profile, options: dict[str, Any] | list[str] | None = None) -> MethodConfig:
    """The method's config: its defaults, then the profile's epochs/batch size/lr scaling, then ``options``.

    ``options`` is a dict or a list of ``KEY=VALUE`` strings (:func:`cl_peft_lib.options.parse_opts`).

    Raises:
        KeyError: unknown method. ValueError: unknown option, or a value of the wrong type or range.
    """
    cls = get_method_class(method).config_cls
    options = parse_opts(options)
    d: dict[str, Any] = {}
    if profile.epochs is not None and cls().epochs > 0:
        d["epochs"] = profile.epochs
    if profile.batch_size is not None:
        d["batch_size"] = profile.batch_size
    ref = cls().lr_ref_batch
    if profile.lr_batch and ref:  # lr * batch / ref' == lr * lr_batch / ref
        d["lr_ref_batch"] = ref * d.get("batch_size", cls().batch_size) / profile.lr_batch
    d.update(options or {})
    return cls.from_dict(d)


def batches(ds: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
            num_workers: int = 0, pin_memory: bool = False,
            shard: D.Shard | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(uint8 images, labels)`` batches; in-memory data is sliced directly (no per-item Python). With
    ``pin_memory`` every batch is in pinned host memory, the sliced ones too.

    With ``shard`` (data-parallel runs) only this rank's part is read, shuffled by the shard's
    seed and epoch instead of ``generator`` (see :func:`cl_peft_lib.distributed.shard_indices`).
    """
    if has_fast_batches(ds):
        n = len(ds)
        if shard is not None:
            order = D.shard_indices(n, shard, shuffle)
        else:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, len(order), batch_size):
            x, y = ds.get_batch(order[i:i + batch_size])
            # pinned as the DataLoader's: a copy to the GPU from pageable memory would wait for its queued work
            yield (x.pin_memory(), y.pin_memory()) if pin_memory else (x, y)
        return
    if shard is not None:
        yield from DataLoader(ds, batch_size=batch_size, sampler=D.shard_sampler(ds, shard, shuffle),
                              generator=generator, num_workers=num_workers, pin_memory=pin_memory)
        return
    yield from DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=generator,
                          num_workers=num_workers, pin_memory=pin_memory)


class Runner:
    """Holds what one run needs: scenario, method, device and preprocessing.

    Most users call :func:`run_continual`; notebooks that want to look inside a
    method between tasks use the runner's pieces. Every batch of a run (training,
    ``end_task`` and evaluation) comes from :meth:`model_batches`: a subclass may
    override it to instrument the input pipeline (the benchmark suite times it so).
    """

    def __init__(self, cfg: RunConfig, scenario: Scenario | None = None, backbone: torch.nn.Module | None = None) -> None:
        self.cfg = cfg
        # Every check that needs no data comes first: a bad name, option or device never waits for a data set.
        self.profile = get_profile(cfg.profile)
        device = resolve_device(cfg.device)
        get_method_class(cfg.method)
        self.loss_check_every = loss_check_every()  # a bad $CL_PEFT_LOSS_CHECK_EVERY fails here
        compile_mode = compiling.compile_mode()  # ... and a bad $CL_PEFT_COMPILE
        # the reference settings of the method on this benchmark (paper profile), then the run's own options
        ref_opts = self.profile.method_options(cfg.method, cfg.benchmark)
        self.mcfg = method_config(cfg.method, self.profile, {**ref_opts, **parse_opts(cfg.method_options)})
        self.backbone_name = cfg.backbone or self.profile.backbone_for(cfg.method)
        if scenario is None and cfg.benchmark not in BENCHMARKS:
            raise KeyError(f"unknown benchmark '{cfg.benchmark}'; valid: {', '.join(BENCHMARKS)}")
        if backbone is None:
            backbone_spec(self.backbone_name)
        D.init_from_env(device)  # no-op in one process, and once per process under torchrun
        self.device = D.local_device(device)
        seed_everything(cfg.seed)
        self.scenario = scenario or build_benchmark(cfg.benchmark, self.profile, cfg.seed)
        self.backbone = backbone or create_backbone(self.backbone_name)
        self.backbone_fingerprint = state_fingerprint(self.backbone)
        seed_everything(cfg.seed)
        mcls = get_method_class(cfg.method)
        s = self.scenario
        self.method: ContinualMethod = mcls(self.backbone, s.kind, s.num_classes, s.num_tasks, self.mcfg).to(self.device)
        # regional torch.compile where it pays (cl_peft_lib.compiling); recorded in the provenance, not the identity
        self.compiled, self.compile_note = compiling.wanted(self.profile.name, self.device, compile_mode)
        if self.compiled:
            compiling.compile_blocks(self.method)
        b = self.backbone
        self.size, self.mean, self.std = b.cl_img_size, b.cl_mean, b.cl_std
        self.out = Path(cfg.out_dir) if cfg.out_dir else None

    # ------------------------------------------------------------------ data
    def model_batches(self, ds: Dataset, batch_size: int | None = None, shuffle: bool = False,
                      generator: torch.Generator | None = None,
                      shard: D.Shard | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Model-ready ``(x, y)`` batches on the device (this rank's part only, with ``shard``)."""
        pin = self.device.type == "cuda"
        for x, y in batches(ds, batch_size or self.profile.eval_batch_size, shuffle, generator,
                            self.profile.num_workers, pin, shard):
            x = x.to(self.device, non_blocking=True)
            yield to_model_input(x, self.size, self.mean, self.std), y.to(self.device, non_blocking=True)

    def context(self, task) -> TaskContext:
        return TaskContext(task, self.device, self.model_batches, lambda: autocast(self.device), self.cfg.seed)

    # ------------------------------------------------------------------ identity of a run
    def fingerprint(self) -> str:
        s = self.scenario
        ident = {
            "method": self.cfg.method, "config": self.mcfg.to_dict(), "benchmark": s.name,
            "profile": asdict(self.profile), "seed": self.cfg.seed, "backbone": self.backbone.cl_tag,
            "backbone_sha256": self.backbone_fingerprint, "class_order": s.class_order,
            "tasks": [[t.name, len(t.train), len(t.test)] for t in s.tasks],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()

    # ------------------------------------------------------------------ training
    def train_task(self, t: int, step_callback: Callable[[int, int, ContinualMethod], None] | None = None) -> dict[str, float]:
        """Train the method on task ``t`` (the union of tasks ``0..t`` for cumulative methods)."""
        cfg, m, s = self.mcfg, self.method, self.scenario
        ds = ConcatImageDataset([x.train for x in s.tasks[: t + 1]]) if m.cumulative else s.tasks[t].train
        groups = [g for g in m.param_groups() if g["params"]]
        if cfg.epochs <= 0 or not groups:
            return {}
        # Data-parallel: each rank takes 1/world of every batch, so the global batch stays cfg.batch_size.
        world = D.world_size()
        bs = math.ceil(cfg.batch_size / world)
        steps = math.ceil(math.ceil(len(ds) / world) / bs)
        opt, sched = build_optimizer(cfg, groups, steps * cfg.epochs)
        params = [p for g in groups for p in g["params"]]
        D.broadcast_parameters(params)  # every rank starts the task from rank 0's values (no-op in one process)
        scaler = torch.amp.GradScaler(enabled=amp_dtype(self.device) == torch.float16)
        m.train()
        last: dict[str, Any] = {}
        watch = LossWatch(cfg, self.loss_check_every)
        bar = tqdm(total=steps * cfg.epochs, desc=f"task {t}", disable=not self.cfg.progress or not D.is_main(),
                   leave=False)
        try:
            for epoch in range(cfg.epochs):
                seed = self.cfg.seed * 1_000_003 + t * 1009
                g = torch.Generator().manual_seed(seed + epoch)
                shard = D.Shard(D.rank(), world, seed, epoch) if world > 1 else None
                # training augmentation (training batches only): a table over the epoch's global positions, drawn
                # from the same (seed, task, epoch); rank r's local position q is global position q*world + r, so
                # each sample is augmented alike for any world size and after a resume; the data order is untouched
                prof = self.profile
                aug = epoch_augment_params(steps * bs * world, prof.train_augment, (seed + epoch) * 7919 + 104729,
                                           prof.augment_scale, prof.augment_ratio)
                pos = torch.arange(steps * bs) * world + D.rank()
                for step, (x, y) in enumerate(self.model_batches(ds, bs, True, g, shard)):
                    if aug is not None:
                        x = apply_augment(x, aug[pos[step * bs:step * bs + len(x)]])
                    where = f" at task {t}, epoch {epoch}, step {step}"
                    last = train_step(m, x, y, opt, scaler, params, cfg, self.device, sched, where, check=False)
                    bar.update(1)
                    if watch.add(last["loss"], where):
                        bar.set_postfix(loss=f"{watch.check():.3f}")
                    if step_callback is not None:
                        step_callback(t, step, m)
                loss = watch.check()  # every epoch ends with a check
                if loss is not None:
                    bar.set_postfix(loss=f"{loss:.3f}")
        finally:
            bar.close()
            m.eval()
        return D.mean_logs({k: float(v) for k, v in last.items()})

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, t: int, settings: EvalConfig = DEFAULT_EVAL) -> tuple[list[float], list[float] | None]:
        """Accuracy (%) on tasks ``0..t`` under evaluation ``settings`` (split, masking, oracle task id,
        merged weights, batch-wise selection); task-identification accuracy too when the method predicts it."""
        m = self.method
        accs, tids = [], []
        m.eval()
        m.set_eval(settings)
        world = D.world_size()
        shard = D.Shard(D.rank(), world, pad=False) if world > 1 else None  # each rank counts its part
        try:
            for i, task in enumerate(self.scenario.tasks[: t + 1]):
                data = task.test if settings.split == "test" else getattr(task, "val", None)
                if data is None:
                    raise ValueError(f"benchmark {self.scenario.name} has no validation split (task {task.name})")
                correct = n = tcorrect = 0
                for x, y in self.model_batches(data, shard=shard):
                    with autocast(self.device):
                        logits = m.predict(x, task_id=i)  # the true task is used only under oracle_task_id
                    correct += int((logits.argmax(1) == y).sum())
                    n += len(y)
                    if m.identifies_tasks and m.last_task_ids is not None:
                        tcorrect += int((m.last_task_ids == i).sum())
                if world > 1:
                    correct, n, tcorrect = D.all_reduce_sum([correct, n, tcorrect])
                accs.append(100.0 * correct / max(n, 1))
                tids.append(100.0 * tcorrect / max(n, 1))
        finally:
            m.set_eval(DEFAULT_EVAL)
        return accs, (tids if m.identifies_tasks else None)

    # ------------------------------------------------------------------ checkpoints
    #: the checkpoint's file name in a run's folder (written after every task; resumed from)
    CHECKPOINT = "checkpoint.pt"

    @property
    def checkpoint_path(self) -> Path | None:
        """``out_dir/checkpoint.pt``, the state after the last finished task (None: the run writes nothing)."""
        return self.out / self.CHECKPOINT if self.out else None

    def say(self, msg: str) -> None:
        """One status line on stderr (rank 0 only): what a run does about what it found on disk."""
        if D.is_main():
            print(f"[{self.cfg.method} {self.scenario.name} seed {self.cfg.seed}] {msg}", file=sys.stderr, flush=True)

    def finished_result(self) -> dict | None:
        """The complete ``results.json`` of this very run, when resuming; None when there is none.

        Raises:
            CheckpointError: a complete result of another run (or of unknown identity) is in the folder
                but no checkpoint says whose it is: it is never overwritten without ``resume=False``.
        """
        path = self.out / "results.json" if self.out else None
        if path is None or not self.cfg.resume or not path.exists():
            return None
        try:
            res = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a torn or unreadable file: the checkpoint (if any) decides
        if not isinstance(res, dict) or res.get("status") != "complete":
            return None
        if res.get("fingerprint") == self.fingerprint():
            return res
        if self.checkpoint_path.exists():
            return None  # load_checkpoint refuses a foreign checkpoint with its own message
        raise CheckpointError(f"{path} holds the complete result of a different run (or one made before runs "
                              f"recorded their fingerprint) and no checkpoint; it is not overwritten: use another "
                              f"--out folder, or --no-resume to replace it")

    def load_checkpoint(self) -> dict | None:
        """The checkpoint of this very run, or None; raises :class:`CheckpointError` for a foreign or corrupt one."""
        path = self.checkpoint_path
        if path is None or not self.cfg.resume or not path.exists():
            return None
        try:
            ck = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unreadable file is refused the same way
            raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); "
                                  f"delete it to start this run from scratch") from e
        if not isinstance(ck, dict) or ck.get("fingerprint") != self.fingerprint():
            raise CheckpointError(f"checkpoint {path} belongs to a different run (method, config, benchmark, "
                                  f"profile, seed or backbone differ); use another --out folder or delete it")
        for t in range(ck["task"] + 1):
            self.method.begin_task(t, self.scenario.tasks[t].classes)
        try:
            self.method.load_checkpoint_state(ck["state"])
        except (ValueError, RuntimeError) as e:
            raise CheckpointError(f"checkpoint {path} does not fit the method: {e}") from e
        return ck

    def run(self, step_callback: Callable[[int, int, ContinualMethod], None] | None = None) -> dict[str, Any]:
        """Train and evaluate task after task (resuming from a checkpoint); see :func:`run_continual`.

        After it returns, ``self.method`` is the trained method, for inspection.
        """
        r, cfg = self, self.cfg
        s, m = r.scenario, r.method
        result: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "method": cfg.method, "benchmark": s.name, "scenario": s.kind, "profile": r.profile.name,
            "seed": cfg.seed, "config": r.mcfg.to_dict(), "run": asdict(cfg),
            "provenance": provenance(r.device, backbone=r.backbone.cl_tag, datasets=",".join(s.datasets),
                                     compile=r.compile_note),
            "task_names": [t.name for t in s.tasks], "class_order": s.class_order,
            "accuracy_matrix": [], "task_id_accuracy": None, "wall_time_s": [], "train_logs": [],
            "trainable_params": m.num_trainable(), "status": "running", "fingerprint": r.fingerprint(),
            "store_key": run_key(cfg.method, cfg.method_options, backbone_override(cfg.profile, cfg.backbone, cfg.method)),
        }
        if D.world_size() > 1:
            import torch.distributed as dist

            if len(set(D.all_gather_object(r.fingerprint()))) > 1:  # frozen weights are never broadcast
                raise RuntimeError("the ranks disagree on the run (backbone weights, data or config differ); a random "
                                   "backbone passed to run_continual must be created after seeding, identically on "
                                   "every rank")
            result["distributed"] = {"world_size": D.world_size(), "backend": dist.get_backend(),
                                     "note": "train_logs average the ranks; extra metrics (e.g. selection counts) "
                                             "are rank 0's shard"}
        done = r.finished_result()
        ck = r.load_checkpoint()  # every rank loads the same checkpoint
        D.barrier()  # ... before rank 0 may overwrite it
        if done is not None:
            r.say(f"finished: nothing to do ({r.out / 'results.json'} is complete"
                  + ("" if ck is not None else "; its checkpoint is gone, so the trained method is not loaded") + ")")
            return done
        start = 0
        if ck is not None:
            r.say(f"resuming after task {ck['task']} of {s.num_tasks} ({r.checkpoint_path})")
            start = ck["task"] + 1
            for k in ("accuracy_matrix", "task_id_accuracy", "wall_time_s", "train_logs"):
                result[k] = ck["results"][k]
            result["resumed_from_task"] = ck["task"]
            result["trainable_params"] = m.num_trainable()  # modules created by begin_task (e.g. S-X's per domain)
        results_path = r.out / "results.json" if r.out and D.is_main() else None  # rank 0 writes
        try:
            for t in range(start, s.num_tasks):
                task = s.tasks[t]
                seed_everything(cfg.seed * 1000 + t)
                t0 = time.perf_counter()
                m.begin_task(t, task.classes)
                logs = r.train_task(t, step_callback)
                m.end_task(t, r.context(task))
                t1 = time.perf_counter()
                accs, tids = r.evaluate(t)
                t2 = time.perf_counter()
                result["accuracy_matrix"].append(accs)
                if tids is not None:
                    result["task_id_accuracy"] = (result["task_id_accuracy"] or []) + [tids]
                result["wall_time_s"].append({"train": round(t1 - t0, 3), "eval": round(t2 - t1, 3)})
                result["train_logs"].append(logs)
                result["trainable_params"] = m.num_trainable()
                if results_path:
                    atomic_torch_save({"fingerprint": r.fingerprint(), "task": t, "state": m.checkpoint_state(),
                                       "results": {k: result[k] for k in ("accuracy_matrix", "task_id_accuracy",
                                                                          "wall_time_s", "train_logs")}},
                                      r.checkpoint_path)
                    RunResult.from_dict(result, source=results_path).save(results_path)
        except Exception as e:
            result["status"] = "failed"
            result["error"] = f"{type(e).__name__}: {e}"
            if results_path:
                RunResult.from_dict(result, source=results_path).save(results_path)
            raise
        result["metrics"] = summarize(result["accuracy_matrix"])
        result["extra"] = m.extra_metrics()  # (before the validation pass below adds to selection counts)
        if all(getattr(t, "val", None) is not None and len(t.val) for t in s.tasks):
            # model selection reads this (cl_peft_lib.tuning): the last row on the validation split
            val, _ = r.evaluate(s.num_tasks - 1, EvalConfig(split="val"))
            result["validation"] = {"accuracy": val, "average_accuracy": sum(val) / len(val)}
        result["status"] = "complete"
        if results_path:
            RunResult.from_dict(result, source=results_path).save(results_path)
        return result


def run_continual(cfg: RunConfig, scenario: Scenario | None = None, backbone: torch.nn.Module | None = None,
                  step_callback: Callable[[int, int, ContinualMethod], None] | None = None) -> dict[str, Any]:
    """Run one method through a benchmark; return (and write) the results.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this; the first call joins the
    process group (kept for later calls, left at exit), training is data-parallel and only
    rank 0 writes files. Every rank returns the same results.

    Args:
        cfg: what to run.
        scenario: a prebuilt scenario (default: built from ``cfg.benchmark`` and the profile).
        backbone: a prebuilt backbone (default: the profile's).
        step_callback: called as ``f(task, step, method)`` after every optimizer step (tests use it
            to simulate a crash).

    Returns:
        The results dict also written to ``out_dir/results.json``: config, seed, provenance,
        accuracy matrix, metrics, wall times, trainable-parameter count, status.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (results of finished tasks are kept on disk).
        CheckpointError: a foreign or corrupt checkpoint is in ``out_dir``.
    """
    return Runner(cfg, scenario, backbone).run(step_callback)


def evaluate_run(cfg: RunConfig, settings: EvalConfig | dict[str, Any] | None = None,
                 scenario: Scenario | None = None, backbone: torch.nn.Module | None = None,
                 recompute: bool = False) -> dict[str, Any]:
    """Score a finished run under other evaluation ``settings``, from its checkpoint, without retraining.

    The run (``cfg.out_dir``, e.g. from :func:`cl_peft_lib.store.run_dir`) must be complete and hold its
    checkpoint: the method's state after the last task. The evaluation covers every task of the
    benchmark (the last row of the accuracy matrix under ``settings``) and is stored beside the run
    (:func:`cl_peft_lib.store.eval_path`); asking again returns the stored one unless ``recompute``.

    Returns:
        ``{"settings", "after_task", "accuracy" (per task, %), "average_accuracy", "task_id_accuracy",
        "fingerprint", "store_key", "provenance"}``.

    Raises:
        CheckpointError: the run is not complete here, or its checkpoint is missing or foreign.
        ValueError: bad settings, or a validation split the benchmark does not have.
    """
    settings = settings if isinstance(settings, EvalConfig) else EvalConfig.from_dict(settings)
    if not cfg.out_dir:
        raise ValueError("evaluate_run needs the run's folder (cfg.out_dir; see cl_peft_lib.store.run_dir)")
    r = Runner(replace(cfg, resume=True), scenario, backbone)
    path = eval_path(r.out, settings.changes())
    if path.exists() and not recompute:
        stored = json.loads(path.read_text())
        if stored.get("fingerprint") == r.fingerprint():
            return stored
    if r.finished_result() is None:
        raise CheckpointError(f"{r.out} holds no complete run of these settings; run it first (cl-peft run ...)")
    ck = r.load_checkpoint()
    if ck is None:
        raise CheckpointError(f"{r.out} has a complete result but no checkpoint to evaluate; re-run it with --no-resume")
    t = ck["task"]
    accs, tids = r.evaluate(t, settings)
    record = {"settings": settings.to_dict(), "after_task": t, "accuracy": accs,
              "average_accuracy": sum(accs) / len(accs), "task_id_accuracy": tids, "fingerprint": r.fingerprint(),
              "store_key": run_key(cfg.method, cfg.method_options, backbone_override(cfg.profile, cfg.backbone, cfg.method)),
              "provenance": provenance(r.device, backbone=r.backbone.cl_tag)}
    if D.is_main():
        atomic_write_json(path, record)
    r.say(f"evaluated under {settings.changes() or 'the default settings'}: average accuracy "
          f"{record['average_accuracy']:.2f} -> {path}")
    return record
