"""End to end: the loop's own :class:`~cl_peft_lib.loop.Runner` on an in-memory, Split-CIFAR-100-shaped
scenario of random ``uint8`` 32-px images staged on the device; wall time per method and the time
the loop waits for batches (``loader_wait_s``), measured by overriding ``Runner.model_batches``
(the loop's documented override point: every batch of a run comes from it).

Chapter: ``notebooks/07_efficiency.ipynb`` (the end-to-end lines under the targets).
"""
from __future__ import annotations

import copy
import time
import traceback
from typing import TYPE_CHECKING, Any, Iterator

import torch

from cl_peft_lib import loop as _loop
from cl_peft_lib.data.base import SubsetDataset, TensorImageDataset
from cl_peft_lib.data.scenarios import class_incremental, domain_incremental
from cl_peft_lib.data.transforms import to_model_input
from cl_peft_lib.methods import METHODS

from .measure import measure, sync
from .micro import kind_of

if TYPE_CHECKING:
    from .core import Bench


class TimedRunner(_loop.Runner):
    """The loop's runner, timing every ``next()`` on its :meth:`model_batches` (the whole input pipeline:
    slicing, host-to-device copy, ``to_model_input``) without changing what it yields. Training batches
    (``shuffle=True``) count as ``wait['train']``, the rest (``end_task`` and evaluation) as ``wait['other']``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.wait: dict[str, Any] = {"train": 0.0, "other": 0.0, "batches": 0}

    def model_batches(self, ds, batch_size=None, shuffle=False, generator=None,
                      shard=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        key = "train" if shuffle else "other"
        it = super().model_batches(ds, batch_size, shuffle, generator, shard)
        while True:
            t0 = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.wait[key] += time.perf_counter() - t0
                return
            self.wait[key] += time.perf_counter() - t0
            self.wait["batches"] += 1
            yield item


def _scenario(b: Bench, kind: str, train, test, names):
    s = b.s
    if kind == "class":
        return class_incremental("synthetic-split-cifar100", train, test, names, s.e2e_tasks, s.seed)
    # the same images cut into domains that share the 100-class label space
    ktr, kte = s.e2e_train // s.e2e_tasks, s.e2e_test // s.e2e_tasks
    doms = [(f"domain{t}", SubsetDataset(train, torch.arange(t * ktr, (t + 1) * ktr)),
             SubsetDataset(test, torch.arange(t * kte, (t + 1) * kte))) for t in range(s.e2e_tasks)]
    return domain_incremental("synthetic-domains", doms, names)


def run_e2e(b: Bench) -> None:
    """One full ``Runner.run`` per method of ``settings.e2e``; appends to ``results['e2e']``."""
    s, dev = b.s, b.device
    size, mean, std = b.attrs
    C = s.e2e_classes
    g = torch.Generator().manual_seed(s.seed)
    n_tr, n_te = s.e2e_train, s.e2e_test
    tr_x = torch.randint(0, 256, (n_tr, 3, s.e2e_img, s.e2e_img), dtype=torch.uint8, generator=g)
    te_x = torch.randint(0, 256, (n_te, 3, s.e2e_img, s.e2e_img), dtype=torch.uint8, generator=g)
    tr_y, te_y = torch.arange(n_tr) % C, torch.arange(n_te) % C
    # Stage the uint8 images on the device: the loop's batches() then slices device tensors and
    # Runner.model_batches' .to(device, non_blocking=True) is a no-op; labels stay on the host
    # (the scenario builders index them with host tensors).
    train = TensorImageDataset(tr_x.to(dev), tr_y, "synthetic-cifar100-train")
    test = TensorImageDataset(te_x.to(dev), te_y, "synthetic-cifar100-test")
    names = [f"c{i}" for i in range(C)]
    # Device cost of the preprocessing alone (uint8 32 px -> normalised float 224 px), per training batch.
    bsz = s.e2e_batch or 128
    xb = train.images[:bsz]
    pre = measure(lambda: to_model_input(xb, size, mean, std), bsz, 2, 10, 3, dev, s.stat)
    pre_info = {"img_s": round(pre["img_s"], 1), "ms_per_batch": round(pre["step_ms"], 3), "batch": bsz}
    b.log(f"[e2e] preprocessing {s.e2e_img}px->{size}px on {dev.type}: {pre_info['img_s']:.0f} img/s")
    for name in s.e2e:
        rec: dict[str, Any] = {"method": name, "epochs": s.e2e_epochs, "tasks": s.e2e_tasks, "train_images": n_tr,
                               "test_images": n_te, "img_px": s.e2e_img, "model_px": size,
                               "data_on_device": dev.type, "preprocess": pre_info}
        if name not in METHODS:
            rec.update(status="skipped", note="not registered in METHODS at run time")
            b.results["e2e"].append(rec)
            b.log(f"[e2e] {name}: not registered, skipped")
            continue
        try:
            rec.update(_run_one(b, name, _scenario(b, kind_of(name), train, test, names)))
            b.log(f"[e2e] {name}: {rec['wall_s']:.1f} s wall (train {rec['train_s']:.1f} s, eval {rec['eval_s']:.1f} s), "
                  f"loader wait {rec['loader_wait_s']:.2f} s")
        except Exception as e:  # noqa: BLE001
            rec.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-3000:])
            b.log(f"[e2e] {name}: error {type(e).__name__}: {str(e)[:300]}")
        b.results["e2e"].append(rec)
        b.free()
        b.save()
    del train, test
    b.free()


def _run_one(b: Bench, name: str, scen) -> dict:
    """``TimedRunner(cfg, scenario, backbone).run()`` (what ``run_continual`` does) timed from outside."""
    s, dev = b.s, b.device
    opts: dict[str, Any] = {"epochs": s.e2e_epochs}
    if s.e2e_batch:
        opts["batch_size"] = s.e2e_batch
    cfg = _loop.RunConfig(name, scen.name, "paper", seed=s.seed, device=str(dev), out_dir=None,
                          method_options=opts, progress=False)
    sync(dev)
    t0 = time.perf_counter()
    runner = TimedRunner(cfg, scen, copy.deepcopy(b.base))
    res = runner.run()
    sync(dev)
    wall = time.perf_counter() - t0
    w = runner.wait
    wt = res["wall_time_s"]
    train_s = sum(x["train"] for x in wt)
    return dict(kind=scen.kind, status=res["status"], wall_s=round(wall, 2), train_s=round(train_s, 2),
                eval_s=round(sum(x["eval"] for x in wt), 2), per_task_wall_s=wt,
                batch_size=res["config"]["batch_size"],
                loader_wait_s=round(w["train"] + w["other"], 3),
                loader_wait_train_s=round(w["train"], 6), loader_wait_eval_s=round(w["other"], 6),  # (µs: a fast eval wait rounds to 0 at ms)
                loader_wait_frac=round((w["train"] + w["other"]) / wall, 4),
                batches=w["batches"],
                train_img_s_effective=round(s.e2e_train * s.e2e_epochs / train_s, 1) if train_s else None,
                trainable_params=res["trainable_params"])
