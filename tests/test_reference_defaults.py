"""Reference defaults (issue 14): prompt init, per-group learning rates, training-only augmentation,
reference backbones and S-Prompts' per-benchmark settings."""
import math

import pytest
import timm
import torch

from cl_peft_lib.backbones import REF_L2P, REF_SPROMPTS, backbone_spec, create_backbone
from cl_peft_lib.data.transforms import augment_batch, random_resized_crop_params, to_model_input
from cl_peft_lib.loop import Runner, RunConfig, build_optimizer, method_config
from cl_peft_lib.methods import METHODS
from cl_peft_lib.methods.lora import L2L, L2LConfig, PlainLoRAConfig, SLoRA, SLoRAConfig
from cl_peft_lib.methods.prompts import L2P, L2PConfig, SPrompts, SPromptsConfig
from cl_peft_lib.profiles import get_profile

BB = "test_vit_micro"


# ----------------------------------------------------------------------------- L2P prompt init
def test_l2p_prompts_start_uniform_minus_one_one():
    assert L2PConfig().prompt_init == (-1.0, 1.0)
    torch.manual_seed(0)
    p = L2P(create_backbone(BB), "class", 4, 2, L2PConfig()).prompts.detach()
    assert p.min() >= -1.0 and p.max() < 1.0
    assert p.min() < -0.9 and p.max() > 0.9  # the whole range is used, not [0, 1)
    assert abs(float(p.mean())) < 0.1
    q = L2P(create_backbone(BB), "class", 4, 2, L2PConfig(prompt_init=(0.0, 1.0))).prompts.detach()
    assert q.min() >= 0.0 and q.max() < 1.0  # the old non-pool range stays an option


# ----------------------------------------------------------------------------- per-group learning rates
def _groups(m):
    return [g for g in m.param_groups() if g["params"]]


@pytest.mark.parametrize("batch", [16, 128])
def test_l2l_keys_and_head_at_l2p_rate_lora_factors_at_lora_lr(batch):
    cfg = L2LConfig(batch_size=batch)
    assert (cfg.lr, cfg.lora_lr, cfg.lr_ref_batch) == (0.03, 0.003, 256)
    m = L2L(create_backbone(BB), "class", 4, 2, cfg)
    m.begin_task(0, [0, 1])
    opt, _ = build_optimizer(cfg, _groups(m), 10)
    lora_ids = {id(p) for p in m.loras.parameters()}
    rates = {}
    for g in opt.param_groups:
        kind = {id(p) in lora_ids for p in g["params"]}
        assert len(kind) == 1, "a group mixes LoRA factors and other parameters"
        rates[kind.pop()] = g["lr"]
    assert math.isclose(rates[False], 0.03 * batch / 256) and math.isclose(rates[True], 0.003 * batch / 256)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert {id(m.pool.keys), id(m.head.weight), id(m.head.bias)} | lora_ids == ids  # nothing else, nothing left out


def test_group_rates_follow_the_profiles_batch_rule_and_the_schedule():
    # smoke: batch 16 trained at the rates of batch 128 (lr_batch=128), for both groups alike
    cfg = method_config("l2l", get_profile("smoke"), {"schedule": "cosine"})
    m = L2L(create_backbone(BB), "class", 4, 2, cfg)
    m.begin_task(0, [0, 1])
    opt, sched = build_optimizer(cfg, _groups(m), 4)
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == pytest.approx(sorted([0.03 * 128 / 256, 0.003 * 128 / 256]))
    for _ in range(2):
        opt.step()
        sched.step()
    half = sorted(g["lr"] for g in opt.param_groups)  # cosine at half way: every group at half its own rate
    assert half == pytest.approx([x / 2 for x in lrs])


def test_slora_heads_at_sprompts_rate_adapters_at_lora_lr_first_domain_weight_decay():
    cfg = SLoRAConfig(rank=2, lora_lr=0.05)
    m = SLoRA(create_backbone(BB), "domain", 4, 2, cfg)
    for t, wd in ((0, 5e-4), (1, 2e-4)):
        m.begin_task(t, [0, 1, 2, 3])
        opt, _ = build_optimizer(cfg, _groups(m), 10)
        by_kind = {}
        names = {id(p): n for n, p in m.named_parameters()}
        for g in opt.param_groups:
            kinds = {"lora_" in names[id(p)] for p in g["params"]}
            assert len(kinds) == 1
            by_kind[kinds.pop()] = g
            assert g["weight_decay"] == wd
        assert by_kind[False]["lr"] == 0.01 and by_kind[True]["lr"] == 0.05
        assert all(f".task{t}." in names[id(p)] for p in by_kind[True]["params"])  # only the current adapter


def test_sprompts_reference_weight_decay_and_epochs():
    c = SPromptsConfig()
    assert (c.first_task_weight_decay, c.weight_decay) == (5e-4, 2e-4)
    m = SPrompts(create_backbone(BB), "domain", 4, 2, c)
    m.begin_task(0, [0, 1, 2, 3])
    assert {g["weight_decay"] for g in _groups(m)} == {5e-4}
    m.begin_task(1, [0, 1, 2, 3])
    assert {g["weight_decay"] for g in _groups(m)} == {2e-4}
    off = SPrompts(create_backbone(BB), "domain", 4, 2, SPromptsConfig(first_task_weight_decay=None))
    off.begin_task(0, [0, 1, 2, 3])
    assert {g["weight_decay"] for g in _groups(off)} == {2e-4}
    paper = get_profile("paper")
    assert paper.method_options("sprompts", "core50") == {"epochs": 20}
    assert paper.method_options("slora", "domainnet") == {"epochs": 30}
    assert paper.method_options("l2p", "split-cifar100") == {} == paper.method_options("sprompts", "offline-dil")
    assert get_profile("offline").method_options("sprompts", "core50") == {}  # offline keeps the cheap default


def test_plain_lora_has_its_own_rate():
    assert PlainLoRAConfig().lr == 0.0005 and PlainLoRAConfig().lr_ref_batch == 256


# ----------------------------------------------------------------------------- reference backbones
def test_reference_backbones_per_method(monkeypatch):
    monkeypatch.delenv("CL_PEFT_BACKBONE", raising=False)
    for name in (REF_L2P, REF_SPROMPTS, "vit_base_patch16_224.augreg_in21k"):
        assert backbone_spec(name).timm_name in timm.list_pretrained("vit_base_patch16_224*")
    p = get_profile("paper")
    assert [p.backbone_for(m) for m in ("l2p", "dualprompt", "l2l", "lora", "linear_probe")] == [REF_L2P] * 5
    assert p.backbone_for("sprompts") == p.backbone_for("slora") == REF_SPROMPTS
    assert p.backbone_for("finetune") == "vit_base_patch16_224.augreg_in21k"
    assert get_profile("paper", backbone="vit_base_patch16_224.augreg_in21k").backbone_for("l2p") == \
        "vit_base_patch16_224.augreg_in21k"  # a backbone named explicitly wins
    monkeypatch.setenv("CL_PEFT_BACKBONE", BB)
    assert get_profile("paper").backbone_for("sprompts") == BB
    assert get_profile("offline").backbone_for("l2p") == BB  # the env var, as before


# ----------------------------------------------------------------------------- augmentation
def _batch(n=6, size=16):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g)


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
def test_augmentation_seeded_deterministic_shape_preserving(mode):
    x = _batch()
    a = augment_batch(x, mode, torch.Generator().manual_seed(0))
    b = augment_batch(x, mode, torch.Generator().manual_seed(0))
    c = augment_batch(x, mode, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert a.min() >= x.min() - 1e-6 and a.max() <= x.max() + 1e-6  # resampled inside the image, no padding


def test_augmentation_modes():
    x = _batch(n=64)
    assert augment_batch(x, "none", torch.Generator()) is x
    whole = augment_batch(x, "crop", torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole, x, atol=1e-5)  # the whole image at scale 1 is the identity
    flipped = augment_batch(x, "crop_flip", torch.Generator().manual_seed(0), scale=(1.0, 1.0), ratio=(1.0, 1.0))
    same = [torch.allclose(f, i, atol=1e-5) for f, i in zip(flipped, x)]
    mirrored = [torch.allclose(f, i.flip(-1), atol=1e-5) for f, i in zip(flipped, x)]
    assert all(s or m for s, m in zip(same, mirrored)) and 10 < sum(mirrored) < 54  # p = 1/2
    with pytest.raises(ValueError, match="crop_flip"):
        augment_batch(x, "flip", torch.Generator())


def test_crop_boxes_follow_scale_and_ratio():
    w, h, x0, y0 = random_resized_crop_params(2000, torch.Generator().manual_seed(0), (0.3, 0.6), (0.8, 1.25))
    assert ((w * h >= 0.3 - 1e-5) & (w * h <= 0.6 + 1e-5)).all()
    assert ((w / h >= 0.8 - 1e-5) & (w / h <= 1.25 + 1e-5)).all()
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 1 + 1e-6).all() and (y0 + h <= 1 + 1e-6).all()


def test_profiles_augment_training_as_documented():
    assert get_profile("paper").train_augment == "crop_flip" and get_profile("paper").augment_scale == (0.05, 1.0)
    for name in ("offline", "smoke"):
        assert get_profile(name).train_augment == "crop"  # digits: no flips


class _Spy(METHODS["linear_probe"]):
    """Linear probe that records what reaches observe, end_task and predict."""

    records: dict = {}

    def observe(self, x, y):
        _Spy.records.setdefault("train", []).append(x.detach().clone())
        return super().observe(x, y)

    def end_task(self, task_id, ctx):
        _Spy.records.setdefault("end_task", []).extend(x.clone() for x, _ in ctx.batches(ctx.task.train))

    def predict(self, x, task_id=None):
        _Spy.records.setdefault("eval", []).append(x.clone())
        return super().predict(x, task_id)


def _spy_run(toy_scenario, monkeypatch):
    monkeypatch.setitem(METHODS, "linear_probe", _Spy)
    _Spy.records = {}
    sc = toy_scenario("class", num_tasks=2, per_class=12)
    cfg = RunConfig("linear_probe", sc.name, "smoke", device="cpu", backbone=BB, progress=False,
                    method_options={"epochs": 2, "batch_size": 8})
    r = Runner(cfg, sc, create_backbone(BB))
    r.method.begin_task(0, sc.tasks[0].classes)
    r.train_task(0)
    r.method.end_task(0, r.context(sc.tasks[0]))
    r.evaluate(0)
    return r, sc, _Spy.records


def test_augmentation_reaches_training_batches_only(toy_scenario, monkeypatch):
    r, sc, seen = _spy_run(toy_scenario, monkeypatch)
    plain = lambda ds: torch.cat([x for x, _ in r.model_batches(ds)])  # noqa: E731
    train, test = plain(sc.tasks[0].train), plain(sc.tasks[0].test)

    def found(x, pool):
        return bool((pool - x).flatten(1).abs().amax(1).min() == 0)

    trained = torch.cat(seen["train"])
    assert len(trained) == 2 * len(train) and trained.shape[1:] == train.shape[1:]
    assert sum(found(x, train) for x in trained) < len(trained) // 10  # training inputs are augmented
    assert all(found(x, train) for x in seen["end_task"])  # end_task statistics see the plain images
    assert all(found(x, test) for x in torch.cat(seen["eval"]))  # evaluation too
    again = _spy_run(toy_scenario, monkeypatch)[2]  # a fresh run (as after a resume) draws the same crops
    assert all(torch.equal(a, b) for a, b in zip(seen["train"], again["train"]))


def test_no_augmentation_feeds_plain_training_images(toy_scenario, monkeypatch):
    from cl_peft_lib import profiles

    monkeypatch.setitem(profiles.PROFILES, "smoke", profiles.replace(profiles.PROFILES["smoke"], train_augment="none"))
    r, sc, seen = _spy_run(toy_scenario, monkeypatch)
    train = torch.cat([x for x, _ in r.model_batches(sc.tasks[0].train)])
    assert all(bool((train - x).flatten(1).abs().amax(1).min() == 0) for x in torch.cat(seen["train"]))
    raw, _ = sc.tasks[0].train.get_batch(torch.arange(2))
    assert torch.equal(to_model_input(raw, r.size, r.mean, r.std), train[:2])


def test_epoch_table_depends_on_position_only():
    """A position's crop does not depend on how many positions are drawn (the loop keys the table by the
    global epoch position, so 1 and 2 ranks augment each sample alike)."""
    from cl_peft_lib.data.transforms import epoch_augment_params

    a = epoch_augment_params(10, "crop_flip", 7, block=4)
    b = epoch_augment_params(23, "crop_flip", 7, block=4)
    assert a.shape == (10, 5) and torch.equal(a, b[:10])
    assert not torch.equal(a, epoch_augment_params(10, "crop_flip", 8, block=4))
    assert epoch_augment_params(10, "none", 7) is None
    assert set(b[:, 4].tolist()) == {0.0, 1.0} and set(epoch_augment_params(9, "crop", 7)[:, 4].tolist()) == {0.0}
