"""CODA-Prompt: the batched forward against a per-sample implementation of the paper's equations,
per-task components (earlier ones bit-identical), Gram-Schmidt initialisation, the orthogonality
penalty, parameter count, validation, smoke learning."""
import math

import pytest
import torch

from cl_peft_lib.backbones import state_fingerprint
from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.methods import METHODS
from cl_peft_lib.methods.coda import CODAPrompt, CODAPromptConfig

from test_prompts import _one_thread, backbone, runner as _runner, train_all  # noqa: F401  (shared helpers; _one_thread is autouse)

BB = "test_vit_micro"  # D=48, 2 blocks, 2 heads
SMALL = {"pool_size": 10, "layers": (0, 1)}  # the micro backbone has 2 blocks; 10 components fit in D=48


def runner(scenario, seed=0, **opts):
    return _runner("coda", scenario, seed, **{**SMALL, **opts})


def test_registered_with_reference_defaults_and_validated():
    assert METHODS["coda"] is CODAPrompt
    c = CODAPromptConfig()
    assert (c.pool_size, c.prompt_length, c.ortho_mu, tuple(c.layers)) == (100, 8, 0.0, (0, 1, 2, 3, 4))
    assert (c.optimizer, c.lr, c.lr_ref_batch, c.batch_size, c.epochs, c.schedule) == ("adam", 0.001, None, 128, 20,
                                                                                        "cosine")
    assert (c.weight_decay, c.momentum, c.train_mask, c.grad_clip) == (0.0, 0.9, True, None)
    for bad, needle in [({"prompt_length": 7}, "must be even"), ({"layers": (0, -1)}, "block indices >= 0"),
                        ({"layers": (1, 1)}, "distinct"), ({"ortho_mu": -1.0}, "ortho_mu must be >= 0"),
                        ({"pool_size": 0}, "pool_size must be >= 1")]:
        with pytest.raises(ValueError, match=needle):
            CODAPromptConfig(**bad)
    with pytest.raises(ValueError, match=r"layers \[2, 3, 4\] do not exist in this 2-block backbone"):
        CODAPrompt(backbone(), "class", 4, 2, CODAPromptConfig())
    with pytest.raises(ValueError, match="no component to each of 3 tasks"):
        CODAPrompt(backbone(), "class", 4, 3, CODAPromptConfig(pool_size=2, layers=(0,)))


def test_trainable_params_closed_form():
    cfg, C, T, D = CODAPromptConfig(**SMALL), 6, 3, 48
    m = CODAPrompt(backbone(), "class", C, T, cfg)
    spelled_out = 2 * 9 * (8 * D + 2 * D) + D * C + C  # |layers|=2, (10 // 3) * 3 = 9 components, L=8
    assert m.num_trainable() == CODAPrompt.expected_trainable_params(cfg, D, C, T) == spelled_out
    for t in range(T):
        m.begin_task(t, [2 * t, 2 * t + 1])
        assert m.num_trainable() == spelled_out
        trained = {n for n, p in m.named_parameters() if p.requires_grad}
        assert trained == {f"slices.{t}.{k}" for k in "PKA"} | {"head.weight", "head.bias"}, trained


# ----------------------------------------------------------------------------- the forward, one sample at a time
def attention_with_prefix(attn, x, pk, pv):
    """One sample's multi-head attention (N, D), prefix keys/values (L', D) prepended, explicit softmax."""
    N, D = x.shape
    H = attn.num_heads
    dh = D // H
    q, k, v = attn.qkv(x).reshape(N, 3, H, dh).permute(1, 2, 0, 3)  # each (H, N, dh)
    k = torch.cat([pk.reshape(-1, H, dh).transpose(0, 1), k], 1)
    v = torch.cat([pv.reshape(-1, H, dh).transpose(0, 1), v], 1)
    w = (q @ k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)
    return attn.proj((w @ v).transpose(0, 1).reshape(N, D))


@torch.no_grad()
def coda_one_sample(m, x):
    """Logits (C,) of one image by the paper's equations: alpha_m = cos(q * A_m, K_m), p = sum_m alpha_m P_m,
    first L/2 tokens prefix keys, last L/2 prefix values, in the prompted blocks; head on [CLS]."""
    vit = m.backbone
    q = vit.forward_head(vit.forward_features(x[None]), pre_logits=True)[0]
    t = vit._pos_embed(vit.patch_embed(x[None]))[0]
    used = [s for s in m.slices[:m.task_id + 1]]
    L = m.cfg.prompt_length
    for i, blk in enumerate(vit.blocks):
        if i in m.cfg.layers:
            j = list(m.cfg.layers).index(i)
            P = torch.cat([s.P[j] for s in used])
            K = torch.cat([s.K[j] for s in used])
            A = torch.cat([s.A[j] for s in used])
            prompt = torch.zeros(L, vit.embed_dim)
            for c in range(len(K)):
                a = q * A[c]
                alpha = torch.dot(a, K[c]) / (a.norm() * K[c].norm())
                prompt += alpha * P[c]
            h = t + attention_with_prefix(blk.attn, blk.norm1(t), prompt[:L // 2], prompt[L // 2:])
        else:
            h = t + blk.attn(blk.norm1(t)[None])[0]
        t = h + blk.mlp(blk.norm2(h))
    return m.head(vit.norm(t)[0])


def test_batched_forward_equals_the_papers_equations_per_sample():
    torch.manual_seed(0)
    m = CODAPrompt(backbone(), "class", 4, 2, CODAPromptConfig(**SMALL))
    m.begin_task(0, [0, 1])
    m.begin_task(1, [2, 3])
    with torch.no_grad():  # components of both tasks, far from their orthonormal start
        for s in m.slices:
            for p in s.parameters():
                p.copy_(torch.randn_like(p))
    m.eval()
    x = torch.randn(5, 3, 16, 16) * torch.linspace(0.3, 3, 5).view(5, 1, 1, 1)
    batched = m.predict(x)
    alone = torch.stack([coda_one_sample(m, x[b]) for b in range(5)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        m.slices[1].P.zero_()  # task 1's components take part: removing them changes the output
    assert not torch.allclose(m.predict(x), batched, atol=1e-4)


# ----------------------------------------------------------------------------- per-task components
def test_training_task_1_leaves_task_0s_components_bit_identical(toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=8)
    r = runner(sc, epochs=1, lr=0.01)
    m, backbone_before = r.method, state_fingerprint(r.backbone)
    m.begin_task(0, sc.tasks[0].classes)
    r.train_task(0)
    after0 = {n: p.detach().clone() for n, p in m.slices[0].named_parameters()}
    m.begin_task(1, sc.tasks[1].classes)
    start1 = {n: p.detach().clone() for n, p in m.slices[1].named_parameters()}
    r.train_task(1)
    assert all(torch.equal(p, after0[n]) for n, p in m.slices[0].named_parameters())
    assert all(not torch.equal(p, start1[n]) for n, p in m.slices[1].named_parameters()), "task 1 did not train"
    assert state_fingerprint(r.backbone) == backbone_before


def test_a_new_slice_starts_orthonormal_to_the_trained_ones(toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=8)
    r = runner(sc, epochs=1, lr=0.05)
    m = r.method
    m.begin_task(0, sc.tasks[0].classes)
    r.train_task(0)  # task 0's components are no longer orthonormal
    m.begin_task(1, sc.tasks[1].classes)
    for name in "PKA":
        for j in range(2):
            old = getattr(m.slices[0], name)[j].flatten(1)
            new = getattr(m.slices[1], name)[j].flatten(1)
            torch.testing.assert_close(new @ new.T, torch.eye(len(new)), atol=1e-5, rtol=0)
            assert (new @ old.T).abs().max() < 1e-5, name


def test_orthogonality_penalty_is_the_references(toy_scenario):
    m = CODAPrompt(backbone(), "class", 4, 2, CODAPromptConfig(ortho_mu=0.5, **SMALL))
    m.begin_task(0, [0, 1])
    m.begin_task(1, [2, 3])
    with torch.no_grad():
        for s in m.slices:
            for p in s.parameters():
                p.add_(0.1 * torch.randn_like(p))
    m.train()
    loss, logs = m.observe(torch.randn(3, 3, 16, 16), torch.tensor([2, 3, 2]))
    expected = 0.0
    for j in range(2):
        for name in "KAP":
            t = torch.cat([getattr(s, name)[j].reshape(5, -1) for s in m.slices])
            gram = (t @ t.T).detach()
            expected += 0.5 * sum((float(gram[a, b]) - float(a == b)) ** 2 for a in range(10) for b in range(10)) / 100
    assert math.isclose(logs["ortho"], expected, rel_tol=1e-4) and logs["ortho"] > 0
    assert math.isclose(float(loss.detach()), logs["ce"] + logs["ortho"], rel_tol=1e-5)
    loss.backward()
    assert all(p.grad is None for p in m.slices[0].parameters())  # the frozen slice only shapes the penalty


def test_training_logits_are_masked_to_the_current_task():
    m = CODAPrompt(backbone(), "class", 4, 2, CODAPromptConfig(**SMALL))
    m.begin_task(1, [2, 3])
    m.train()
    logits = m.mask_train_logits(m(torch.randn(2, 3, 16, 16)))
    assert torch.isinf(logits[:, :2]).all() and torch.isfinite(logits[:, 2:]).all()


def test_smoke_run_learns_above_chance(toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=8, per_class=24)
    cfg = RunConfig("coda", sc.name, "smoke", device="cpu", backbone=BB, progress=False,
                    method_options={**SMALL, "epochs": 5, "lr": 0.01})
    res = run_continual(cfg, scenario=sc, backbone=backbone(0))
    R = res["accuracy_matrix"]
    assert res["status"] == "complete" and [len(row) for row in R] == [1, 2]
    assert R[0][0] > 25 + 20, R  # 4 classes in task 0: chance 25%
    assert res["trainable_params"] == CODAPrompt.expected_trainable_params(CODAPromptConfig(**SMALL), 48, 8, 2)


def test_checkpoint_roundtrip_and_bf16(toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=8)
    r = train_all(runner(sc, epochs=1))
    x = next(r.model_batches(sc.tasks[1].test))[0]
    fresh = CODAPrompt(backbone(), "class", 4, 2, r.mcfg)
    for t, task in enumerate(sc.tasks):
        fresh.begin_task(t, task.classes)  # re-draws the components, then the checkpoint overwrites them
    fresh.load_checkpoint_state(r.method.checkpoint_state())
    assert torch.equal(fresh.eval().predict(x), r.method.predict(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fresh.predict(x)
        fresh.train()
        loss, _ = fresh.observe(x[:4], torch.tensor([2, 3, 2, 3]))
    loss.backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and torch.isfinite(loss)
    assert fresh.slices[1].P.grad is not None and torch.isfinite(fresh.slices[1].P.grad).all()
