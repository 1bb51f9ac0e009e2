"""What a frozen backbone knows: feature extraction and a linear probe.

Chapter: ``notebooks/02_pretrained_backbone.ipynb``; also the offline backbone's model card.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .data.transforms import to_model_input
from .loop import batches
from .utils import autocast


@torch.no_grad()
def extract_features(backbone: nn.Module, ds: Dataset, device: torch.device | str = "cpu",
                     batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled frozen features ``(N, D)`` (float32, on the CPU) and labels ``(N,)`` of a data set.

    The backbone must carry ``cl_img_size``, ``cl_mean`` and ``cl_std`` (as
    :func:`cl_peft_lib.backbones.create_backbone` sets them).
    """
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    fs, ys = [], []
    for x, y in batches(ds, batch_size):
        x = to_model_input(x.to(device), backbone.cl_img_size, backbone.cl_mean, backbone.cl_std)
        with autocast(device):
            f = backbone.forward_head(backbone.forward_features(x), pre_logits=True)
        fs.append(f.float().cpu())
        ys.append(y)
    return torch.cat(fs), torch.cat(ys)


def linear_probe_accuracy(train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor,
                          steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0,
                          device: torch.device | str = "cpu") -> float:
    """Test accuracy (%) of a multinomial logistic regression on standardised frozen features.

    Full-batch Adam for ``steps`` steps on the training features (deterministic for a seed).
    """
    device = torch.device(device)
    mu, sd = train_f.mean(0), train_f.std(0).clamp(min=1e-6)
    xtr, xte = ((train_f - mu) / sd).to(device), ((test_f - mu) / sd).to(device)
    ytr, yte = train_y.to(device), test_y.to(device)
    C = int(max(ytr.max(), yte.max())) + 1
    g = torch.Generator().manual_seed(seed)
    W = (torch.randn(xtr.shape[1], C, generator=g) * 0.01).to(device).requires_grad_()
    b = torch.zeros(C, device=device, requires_grad=True)
    opt = torch.optim.Adam([W, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(xtr @ W + b, ytr).backward()
        opt.step()
    with torch.no_grad():
        return float(((xte @ W + b).argmax(1) == yte).float().mean() * 100)
