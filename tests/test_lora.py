"""LoRA methods (plain LoRA, L2L, S-LoRA) on the micro test ViT, CPU only."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from cl_peft_lib.backbones import create_backbone, state_fingerprint
from cl_peft_lib.data.base import TensorImageDataset
from cl_peft_lib.data.scenarios import class_incremental, domain_incremental
from cl_peft_lib.evaluation import EvalConfig
from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.methods import METHODS
from cl_peft_lib.methods.lora import L2L, L2LConfig, PlainLoRA, SLoRA, SLoRAConfig, lora_numel, matched_rank
from cl_peft_lib.methods.selection import query_features
from cl_peft_lib.profiles import PROFILES

D, DEPTH, C = 48, 2, 4  # test_vit_micro: embed_dim 48, depth 2; 4 classes
KIND = {"lora": "class", "l2l": "class", "slora": "domain"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices on a few busy cores: one intra-op thread is many times faster."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _randomize_B(module: torch.nn.Module, seed: int = 1) -> None:
    """Give every LoRA B factor non-zero values (a fresh adapter is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n or n.startswith("loras.B"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _base_fingerprint(method) -> str:
    """Fingerprint of the backbone's own weights (peft's wrapping removed from a copy)."""
    b = method.backbone
    return state_fingerprint(copy.deepcopy(b).unload() if isinstance(b, PeftModel) else b)


# ----------------------------------------------------------------------------- building blocks

def test_pool_equals_peft_lora_with_one_module():
    b = create_backbone("test_vit_micro")
    ref = get_peft_model(copy.deepcopy(b), L2LConfig(rank=2, alpha=3.0, target_modules=("qkv", "fc2")).peft_config())
    cfg = L2LConfig(pool_size=1, top_n=1, rank=2, alpha=3.0, target_modules=("qkv", "fc2"))
    m = L2L(b, "class", C, 1, cfg).eval()
    _randomize_B(m)
    n_layers = 0
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if isinstance(mod, LoraLayer):
                key = name.removeprefix("base_model.model.").replace(".", "_")
                mod.lora_A["default"].weight.copy_(m.loras.A[key][0])
                mod.lora_B["default"].weight.copy_(m.loras.B[key][0])
                n_layers += 1
    assert n_layers == 2 * DEPTH == len(m.loras.A)
    x = _x()
    with torch.no_grad():
        ours = m.peft_features(x, torch.zeros(len(x), 1, dtype=torch.long))
        theirs = ref(x)
        with ref.disable_adapter():
            frozen = ref(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, frozen, atol=1e-3)  # the adapters do change the features
    torch.testing.assert_close(m.query(x), frozen, atol=0, rtol=0)  # the query pass has no LoRA


def test_pool_delta_equals_per_sample_sum():
    b = create_backbone("test_vit_micro")
    m = L2L(b, "class", C, 1, L2LConfig(pool_size=3, top_n=2, rank=2))
    _randomize_B(m)
    key = "blocks_1_attn_qkv"
    x = torch.randn(4, 5, D)
    idx = torch.tensor([[0, 1], [2, 1], [0, 2], [1, 1]])
    A, B, s = m.loras.A[key], m.loras.B[key], m.loras.scaling
    naive = torch.stack([sum(s * x[i] @ A[j].T @ B[j].T for j in idx[i].tolist()) for i in range(4)])
    torch.testing.assert_close(m.loras.delta(key, x, idx), naive, atol=1e-5, rtol=1e-5)


def test_slora_routing_merging_and_query():
    b = create_backbone("test_vit_micro")
    frozen = copy.deepcopy(b)
    m = SLoRA(b, "domain", C, 3, SLoRAConfig(rank=2, target_modules=("qkv", "fc1")))
    for t in range(3):
        m.begin_task(t, list(range(C)))
    _randomize_B(m)
    m.eval()
    fp = _base_fingerprint(m)
    x, tids = _x(8), torch.tensor([0, 1, 2, 2, 1, 0, 0, 2])
    with torch.no_grad():
        routed = m.peft_features(x, tids)
        per_domain = torch.empty_like(routed)
        for t in range(3):
            m.backbone.set_adapter(f"task{t}")
            per_domain[tids == t] = m.features(x[tids == t])
        m.set_eval(EvalConfig(merged_inference=True))
        merged = m.peft_features(x, tids)
        one_domain = m.peft_features(x, torch.full((8,), 1))
        m.set_eval(EvalConfig())
        one_routed = m.peft_features(x, torch.full((8,), 1))
        assert not torch.allclose(per_domain[0], m.peft_features(x[:1], torch.tensor([1]))[0], atol=1e-3)
        torch.testing.assert_close(m.query(x), query_features(frozen, x), atol=0, rtol=0)
    torch.testing.assert_close(routed, per_domain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, routed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(one_domain, one_routed, atol=1e-5, rtol=1e-5)
    assert _base_fingerprint(m) == fp  # merges undone bit-exactly


@pytest.mark.parametrize("name", ["lora", "l2l", "slora"])
def test_zero_init_equals_frozen_backbone(name):
    b = create_backbone("test_vit_micro")
    frozen = copy.deepcopy(b)
    cls = METHODS[name]
    m = cls(b, KIND[name], C, 2, cls.config_cls())
    m.begin_task(0, [0, 1])
    x = _x()
    with torch.no_grad():
        f0 = query_features(frozen, x)
        ref = m.heads(f0, torch.zeros(len(x), dtype=torch.long)) if name == "slora" else m.head(f0)
        m.train()
        assert torch.equal(m(x), ref)


def test_parameter_counts_match_closed_form():
    b = lambda: create_backbone("test_vit_micro")  # noqa: E731
    cfg = PlainLoRA.config_cls(rank=3)
    assert PlainLoRA(b(), "class", C, 2, cfg).num_trainable() == DEPTH * 3 * (D + 3 * D) + D * C + C
    cfg = PlainLoRA.config_cls(rank=2, target_modules=("proj", "fc1", "fc2"), layers=(1,))
    assert PlainLoRA(b(), "class", C, 2, cfg).num_trainable() == 1 * 2 * (2 * D + 5 * D + 5 * D) + D * C + C
    cfg = L2LConfig(pool_size=4, top_n=2, rank=2)
    m = L2L(b(), "class", C, 2, cfg)
    assert m.num_trainable() == 4 * D + 4 * DEPTH * 2 * (D + 3 * D) + D * C + C == \
        L2L.expected_trainable_params(cfg, D, C, depth=DEPTH)
    cfg = SLoRAConfig(rank=2, target_modules="qkv,fc2")
    m = SLoRA(b(), "domain", C, 3, cfg)
    for t in range(3):
        m.begin_task(t, list(range(C)))
        assert m.num_trainable() == (t + 1) * (DEPTH * 2 * (4 * D + 5 * D) + D * C + C) == \
            SLoRA.expected_trainable_params(cfg, D, C, T=t + 1, depth=DEPTH)
    assert lora_numel(192, 12, 1) == 9216
    assert matched_rank(10 * 5 * 192, 192, 12) == 1  # L2P's prompts on the offline ViT
    assert matched_rank(3 * 9216 + 100, 192, 12) == 3


@pytest.mark.parametrize("name", ["lora", "l2l", "slora"])
def test_checkpoint_round_trip(name):
    cls = METHODS[name]
    vit = create_backbone("test_vit_micro")
    a, b = (cls(copy.deepcopy(vit), KIND[name], C, 2, cls.config_cls()) for _ in range(2))
    for m in (a, b):
        for t in range(2):
            m.begin_task(t, [2 * t, 2 * t + 1])
    _randomize_B(a)
    state = a.checkpoint_state()
    assert not any("base_layer" in k or k.endswith("qkv.weight") for k in state)  # frozen weights stay out
    b.load_checkpoint_state(state)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)


def test_slora_refuses_class_incremental():
    with pytest.raises(ValueError, match="domain-incremental"):
        SLoRA(create_backbone("test_vit_micro"), "class", C, 2, SLoRAConfig())


# ----------------------------------------------------------------------------- end-to-end runs

def _images(protos: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noisy copies per class of a 4x4 colour pattern (one colour per 4x4 patch), 16x16 uint8."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(len(protos)).repeat_interleave(n)
    x = protos[y].repeat_interleave(4, 2).repeat_interleave(4, 3) + 40 * torch.randn(len(y), 3, 16, 16, generator=g)
    return x.clamp(0, 255).to(torch.uint8), y


def _scenario(kind: str):
    protos = torch.rand(C, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 255
    tr, te = TensorImageDataset(*_images(protos, 16, 1)), TensorImageDataset(*_images(protos, 8, 2))
    names = [f"c{i}" for i in range(C)]
    if kind == "class":
        return class_incremental("toy-cil", tr, te, names, 2, seed=0)
    inv = lambda d: TensorImageDataset(255 - d.images, d.targets)  # noqa: E731
    return domain_incremental("toy-dil", [("plain", tr, te), ("inverted", inv(tr), inv(te))], names)


# lr_ref_batch given explicitly (effective lr 0.3 * 8 / 256), independent of the profile's lr_batch;
# the LoRA factors' own rate (lora_lr) set to the same value as the rest
OPTIONS = {"lora": {"epochs": 4, "batch_size": 8, "lr": 0.3, "lr_ref_batch": 256},
           "l2l": {"epochs": 4, "batch_size": 8, "lr": 0.3, "lora_lr": 0.3, "lr_ref_batch": 256},
           "slora": {"epochs": 4, "batch_size": 8, "lr": 0.2, "lora_lr": 0.2}}


@pytest.fixture(scope="module")
def runs():
    """One short run per method through the shared loop; the method object is kept for inspection."""
    out = {}
    for name in ("lora", "l2l", "slora"):
        made = []

        class Spy(METHODS[name]):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                made.append(self)

        b = create_backbone("test_vit_micro")
        fp = state_fingerprint(b)
        cfg = RunConfig(name, "toy", "smoke", device="cpu", method_options=OPTIONS[name], progress=False)
        METHODS[name], orig = Spy, METHODS[name]
        try:
            # no training augmentation: the toy classes are positional 4x4 patterns, which random crops
            # shift across patch boundaries (augmentation has its own tests in test_reference_defaults.py)
            with pytest.MonkeyPatch.context() as mp:
                mp.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], train_augment="none"))
                res = run_continual(cfg, scenario=_scenario(KIND[name]), backbone=b)
        finally:
            METHODS[name] = orig
        out[name] = (res, fp, made[0])
    return out


@pytest.mark.parametrize("name", ["lora", "l2l", "slora"])
def test_smoke_run_learns_above_chance(runs, name):
    R = runs[name][0]["accuracy_matrix"]
    # each task right after training it (chance: 1/4 of the seen classes, or 1/2 for the first CIL task)
    assert min(R[t][t] for t in range(len(R))) > 75.0, R
    if name == "slora":  # task identity + per-domain modules: nothing forgotten
        assert min(R[-1]) > 75.0, R
        assert min(runs[name][0]["task_id_accuracy"][-1]) > 80.0, runs[name][0]["task_id_accuracy"]


@pytest.mark.parametrize("name", ["lora", "l2l", "slora"])
def test_backbone_bit_identical_after_training(runs, name):
    res, fp_before, m = runs[name]
    trained_B = [p for n, p in m.named_parameters() if "lora_B" in n or n.startswith("loras.B")]
    assert trained_B and all(p.abs().sum() > 0 for p in trained_B)  # the adapters did train
    assert _base_fingerprint(m) == fp_before


# ----------------------------------------------------------------------------- qv: q and v rows of the fused qkv
def test_l2l_qv_adapts_only_query_and_value_rows():
    b = create_backbone("test_vit_micro")
    cfg = L2LConfig(pool_size=3, top_n=2, rank=2, target_modules="qv")
    m = L2L(b, "class", C, 2, cfg)
    assert m.num_trainable() == 3 * D + 3 * DEPTH * 2 * (D + 2 * D) + D * C + C == \
        L2L.expected_trainable_params(cfg, D, C, depth=DEPTH)
    assert all(B.shape[1] == 2 * D for B in m.loras.B.values())
    with torch.no_grad():
        for B in m.loras.B.values():
            B.normal_()
    qkv = b.blocks[0].attn.qkv
    x = torch.randn(2, 5, D)
    m.loras.idx = None
    plain = qkv(x)
    m.loras.idx = torch.tensor([[0, 1], [2, 0]])
    adapted = qkv(x)
    m.loras.idx = None
    diff = (adapted - plain).abs().amax(dim=(0, 1))
    assert diff[D:2 * D].max() == 0  # k untouched
    assert (diff[:D] > 0).all() and (diff[2 * D:] > 0).all()  # q and v adapted


def test_qv_is_refused_where_peft_cannot_express_it():
    with pytest.raises(ValueError, match="only 'l2l'"):
        PlainLoRA(create_backbone("test_vit_micro"), "class", C, 2, PlainLoRA.config_cls(target_modules="qv"))
    with pytest.raises(ValueError, match="choose one"):
        L2LConfig(target_modules="qkv,qv")
    assert L2LConfig().target_modules == ("qkv",)  # the default target is unchanged
