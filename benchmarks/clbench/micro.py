"""The per-method micro-benchmark: the loop builds the method, the loop's own step is timed, then ``predict``.

Each method is built by :class:`cl_peft_lib.loop.Runner` itself (on a synthetic scenario of the
paper's shape), ``begin_task(0)`` is called, and :func:`cl_peft_lib.loop.train_step` (the body of
``Runner.train_task``'s step) is timed on a synthetic model-ready batch; ``end_task(0)`` gets
``Runner.context`` of the synthetic task, and ``predict`` is timed as ``Runner.evaluate`` calls it.

Chapter: ``notebooks/07_efficiency.ipynb``.
"""
from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any, Callable

import torch

from cl_peft_lib import loop as _loop
from cl_peft_lib.data.base import TensorImageDataset
from cl_peft_lib.data.scenarios import Scenario, Task
from cl_peft_lib.methods import get_method_class
from cl_peft_lib.utils import amp_dtype, autocast

from .flops import flop_counter, flop_summary, vit_passes
from .measure import grad_ctx, mem_peak_gib, mem_start
from .variants import compile_blocks, dynamo_stats, fused_like, merged_variant

if TYPE_CHECKING:
    from .core import Bench


def kind_of(method: str) -> str:
    """``class`` unless the method only serves domain-incremental scenarios (S-Prompts, S-LoRA)."""
    return "class" if "class" in get_method_class(method).scenario_kinds else "domain"


def synthetic_scenario(kind: str, num_classes: int, num_tasks: int, size: int, n: int = 64) -> Scenario:
    """A scenario of the benchmark's shape whose tasks hold ``n`` random ``uint8`` images of the model's size.

    The images are only what ``end_task`` sees (prototypes, k-means ...); train and test are the same set.
    """
    k = num_classes // num_tasks
    tasks = []
    for t in range(num_tasks):
        classes = list(range(t * k, (t + 1) * k)) if kind == "class" else list(range(num_classes))
        g = torch.Generator().manual_seed(1000 + t)
        imgs = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        ys = torch.tensor(classes)[torch.randint(len(classes), (n,), generator=g)]
        ds = TensorImageDataset(imgs, ys, f"bench-task{t}")
        tasks.append(Task(t, f"bench-task{t}", ds, ds, classes))
    return Scenario(f"bench-{kind}", kind, tasks, [f"c{i}" for i in range(num_classes)])


def build_runner(b: Bench, name: str, bs: int) -> _loop.Runner:
    """The loop's :class:`~cl_peft_lib.loop.Runner` for ``name`` with the paper profile and batch ``bs``,
    on a fresh copy of the shared backbone and the (cached) synthetic scenario of the method's kind."""
    kind = kind_of(name)
    if kind not in b.scenarios:
        b.scenarios[kind] = synthetic_scenario(kind, *b.s.shapes[kind], b.attrs[0])
    scen = b.scenarios[kind]
    cfg = _loop.RunConfig(name, scen.name, "paper", seed=b.s.seed, device=str(b.device), out_dir=None,
                          method_options={"batch_size": bs}, progress=False)
    return _loop.Runner(cfg, scen, copy.deepcopy(b.base))


def training_state(r: _loop.Runner, total_steps: int, fused: bool = False):
    """Optimizer, scheduler, grad scaler and parameters as ``Runner.train_task`` sets them up (None: no training)."""
    groups = [g for g in r.method.param_groups() if g["params"]]
    if r.mcfg.epochs <= 0 or not groups:
        return None
    opt, sched = _loop.build_optimizer(r.mcfg, groups, total_steps)
    if fused:
        opt, sched = fused_like(opt, sched)
    scaler = torch.amp.GradScaler(enabled=amp_dtype(r.device) == torch.float16)
    return opt, sched, scaler, [p for g in groups for p in g["params"]]


def fp16_skipped_steps(scaler: torch.amp.GradScaler) -> int:
    """Optimizer steps a fresh ``GradScaler`` skipped for inf/NaN gradients: each skip halves the scale, and
    within its growth interval (2,000 steps, far more than a benchmark takes) the scale never grows, so the
    count is ``log2(initial scale / scale)``."""
    init = scaler._init_scale if hasattr(scaler, "_init_scale") else 2.0 ** 16
    return int(round(math.log2(init / scaler.get_scale())))


def loop_step(m, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
              params: list, cfg, dev: torch.device, sched, where: str) -> Callable[[], None]:
    """One training step as :meth:`cl_peft_lib.loop.Runner.train_task` makes it: :func:`~cl_peft_lib.loop.train_step`
    without its per-step check, the loss kept by a :class:`~cl_peft_lib.loop.LossWatch` that tests it every
    ``$CL_PEFT_LOSS_CHECK_EVERY`` steps (its ``check`` is the returned function's ``check`` attribute)."""
    watch = _loop.LossWatch(cfg, _loop.loss_check_every())

    def step() -> None:
        out = _loop.train_step(m, x, y, opt, scaler, params, cfg, dev, sched, where, check=False)
        if watch.add(out["loss"], where):
            watch.check()

    step.check = watch.check
    return step


def train_step_flops(m, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                     dev: torch.device) -> tuple[int, dict[str, int]]:
    """FLOPs of one training step of ``m`` (``observe`` under autocast, then backward) and their count per op;
    the gradients are cleared again, so the step leaves nothing behind."""
    with flop_counter() as fc:
        with autocast(dev):
            loss, _ = m.observe(x, y)
        scaler.scale(loss).backward()
    opt.zero_grad(set_to_none=True)
    return flop_summary(fc)


def bench_method(b: Bench, name: str, bs: int, compiled: bool = False, fused: bool = False) -> dict:
    """Build ``name`` through the loop, time its training step and ``predict``; see the module docstring."""
    s = b.s
    base_mem = mem_start(b.device)
    r = build_runner(b, name, bs)
    m, cfg, scen, dev = r.method, r.mcfg, r.scenario, r.device
    C, T, kind = scen.num_classes, scen.num_tasks, scen.kind
    rec: dict[str, Any] = {"name": name, "method": name, "kind": kind, "num_classes": C, "num_tasks": T,
                           "batch_size": bs, "compile": compiled, "fused_optimizer": fused, "status": "running",
                           "config": cfg.to_dict()}
    task0 = scen.tasks[0]
    m.begin_task(0, task0.classes)
    rec["trainable_params"] = m.num_trainable()
    rec["optimizer_params"] = sum(p.numel() for g in m.param_groups() if g["params"] for p in g["params"])
    x, y = b.input(bs, task0.classes)

    # ---- training step
    state = training_state(r, s.warmup + s.steps * s.repeats + 2, fused)
    if state is not None:
        opt, sched, scaler, params = state
        g0 = opt.param_groups[0]
        rec["optimizer"] = f"{type(opt).__name__}(" + ", ".join(f"{k}={g0.get(k)}" for k in ("lr", "foreach", "fused")) + ")"
        m.train()
        flops, by_op = train_step_flops(m, x, y, opt, scaler, dev)
        rec["vit_passes_train_step"] = vit_passes(by_op, b.base, bs)
        if compiled:
            rec["compiled_blocks"] = compile_blocks(m)
        # The loop's own step: observe under autocast, backward, clip, step; the loss tested as the loop does.
        step = loop_step(m, x, y, opt, scaler, params, cfg, dev, sched, " in the benchmark")
        tr = b.measure(step, bs)
        step.check()
        rec.update(train_img_s=tr["img_s"], train_img_s_repeats=tr["img_s_repeats"], train_step_ms=tr["step_ms"],
                   train_warmup_s=tr["warmup_s"], peak_mem_train_gib=mem_peak_gib(dev, base_mem),
                   flops_train_step=flops, flops_train_per_img=flops / bs, flops_by_op=by_op)
        if scaler.is_enabled():  # fp16 (CL_PEFT_AMP=fp16 or a GPU without bf16): steps the scaler skipped
            rec.update(amp="fp16", fp16_skipped_steps=fp16_skipped_steps(scaler))
        opt.zero_grad(set_to_none=True)
        del opt, sched, params, state
    else:
        rec["train_note"] = "no training step (epochs=0 or nothing to train): the loop skips training"
        if compiled:
            rec["compiled_blocks"] = compile_blocks(m)
    m.eval()

    # ---- end of task 0 (prototypes, k-means ...) on the synthetic task, with the loop's own context
    m.end_task(0, r.context(task0))
    b.free()
    rec.update(_bench_predict(b, r, x, compiled, bs, base_inf=mem_start(dev)))
    if compiled:
        rec["dynamo"] = dynamo_stats()
    del m, r, x, y
    b.free()
    return rec


def _bench_predict(b: Bench, r: _loop.Runner, x: torch.Tensor, compiled: bool, bs: int, base_inf: int) -> dict:
    """Inference numbers of a trained method: ``predict`` (no_grad, inference_mode, merged), the routed pass
    alone and, for the S-methods at the largest batch, ``predict`` after all tasks."""
    s, m, dev, scen = b.s, r.method, r.device, r.scenario
    T = scen.num_tasks
    rec: dict[str, Any] = {}

    def timed_predict(mode: str, fn=None) -> float:
        fn = fn or (lambda: m.predict(x))

        def f():
            with grad_ctx(mode), autocast(dev):
                return fn()
        return round(b.measure(f, bs, infer=True)["img_s"], 2)

    def timed_with_merged(key: str, fn=None) -> None:
        infer[key] = timed_predict("inference_mode", fn)
        merged = merged_variant(m)
        if merged is not None:
            with merged:
                infer[key.replace("inference_mode", "merged_inference_mode")] = timed_predict("inference_mode", fn)

    if not compiled:  # (FLOPs do not depend on compilation; counting is done on the eager config)
        with torch.inference_mode(), autocast(dev), flop_counter() as fc:
            m.predict(x)
        pf, pby = flop_summary(fc)
        rec.update(flops_predict_per_img=pf / bs, vit_passes_predict=vit_passes(pby, b.base, bs))
    infer: dict[str, float] = {}
    if not compiled:
        infer["no_grad"] = timed_predict("no_grad")
    timed_with_merged("inference_mode")
    if getattr(m, "identifies_tasks", False) and hasattr(m, "peft_features") and hasattr(m, "heads"):
        # The routed (adapted) pass alone, all samples on domain 0: what merging can make as fast as a plain ViT.
        tid = torch.zeros(bs, dtype=torch.long, device=dev)
        timed_with_merged("adapted_pass_inference_mode", lambda: m.heads(m.peft_features(x, tid), tid))
        if s.infer_all_tasks and not compiled and T > 1 and bs == max(s.batch_sizes):
            for t in range(1, T):
                m.begin_task(t, scen.tasks[t].classes)
                m.end_task(t, r.context(scen.tasks[t]))
            m.eval()
            timed_with_merged(f"after_{T}_tasks_inference_mode")
            rec["trainable_params_after_all_tasks"] = m.num_trainable()
            rec["routing_note"] = (f"after_{T}_tasks: k-means on random images of every domain, so routing "
                                   f"spreads the batch over ~all {T} domains (worst case for mixed batches)")
    rec.update(infer_img_s=infer, peak_mem_infer_gib=mem_peak_gib(dev, base_inf), status="ok")
    return rec
