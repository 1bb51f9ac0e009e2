"""Prompt methods (L2P, S-Prompts, DualPrompt): hooks into timm, frozen backbone, parameter
counts, vectorised selection, mixed precision, key learning, k-means task identity, smoke learning."""
import math

import pytest
import torch
import torch.nn.functional as F

from cl_peft_lib.backbones import create_backbone, state_fingerprint
from cl_peft_lib.data.base import TensorImageDataset
from cl_peft_lib.data.scenarios import class_incremental
from cl_peft_lib.loop import RunConfig, Runner, run_continual
from cl_peft_lib.methods import METHODS
from cl_peft_lib.methods.prompts import (DualPrompt, DualPromptConfig, L2P, L2PConfig, SPrompts, SPromptsConfig,
                                         embed_tokens, prefix_attention, prefix_block)

BB = "test_vit_micro"  # D=48, 2 blocks, 2 heads, 16x16 input
DP_LAYERS = {"g_layers": [0], "e_layers": [1]}  # the micro backbone has 2 blocks, not the 5 DualPrompt uses


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on 2 cores shared with other jobs, 2 threads make these tiny models ~20x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def backbone(seed: int = 0):
    torch.manual_seed(seed)
    return create_backbone(BB)


def two_world_scenario(per_class: int = 24, size: int = 16, seed: int = 0):
    """Class-incremental, 2 tasks x 2 classes; the tasks differ strongly (dark horizontal vs bright vertical
    stripes), the classes within a task by stripe frequency."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")

    def split():
        xs, ys = [], []
        for c in range(4):
            task, k = divmod(c, 2)
            pat = torch.sin((xx if task == 0 else yy) * (0.5 + 0.9 * k)) * 0.5 + 0.5
            base = pat * 70 + (20 if task == 0 else 170)
            xs.append((base + torch.randn(per_class, 1, size, size, generator=g) * 8).clamp(0, 255).to(torch.uint8))
            ys.append(torch.full((per_class,), c))
        return TensorImageDataset(torch.cat(xs), torch.cat(ys), "two-worlds")

    names = ["c0", "c1", "c2", "c3"]
    return class_incremental("two-worlds", split(), split(), names, 2, seed, class_order=[0, 1, 2, 3])


def runner(method, scenario, seed=0, **opts):
    cfg = RunConfig(method, scenario.name, "smoke", seed=seed, device="cpu", backbone=BB, progress=False,
                    method_options=opts)
    return Runner(cfg, scenario, backbone(seed))


def train_all(r):
    for t, task in enumerate(r.scenario.tasks):
        r.method.begin_task(t, task.classes)
        r.train_task(t)
        r.method.end_task(t, r.context(task))
    r.method.eval()
    return r


def run(method, scenario, seed=0, **opts):
    cfg = RunConfig(method, scenario.name, "smoke", seed=seed, device="cpu", backbone=BB, progress=False,
                    method_options=opts)
    return run_continual(cfg, scenario=scenario, backbone=backbone(seed))


@torch.no_grad()
def selection_histogram(r, task):
    """How often each pool entry is among the selected ones on a task's test set (eval mode)."""
    m = r.method.eval()
    h = torch.zeros(m.cfg.pool_size, dtype=torch.long)
    for x, _ in r.model_batches(task.test):
        idx, _ = m.pool.select(m.query(x))
        h += torch.bincount(idx.flatten(), minlength=len(h))
    return h


# ----------------------------------------------------------------------------- hooks and defaults
def test_registered_with_published_defaults():
    assert METHODS["l2p"] is L2P and METHODS["sprompts"] is SPrompts and METHODS["dualprompt"] is DualPrompt
    c = L2PConfig()
    assert (c.pool_size, c.top_n, c.prompt_length, c.surrogate_weight, c.batch_size, c.epochs) == (10, 5, 5, 0.1, 16, 5)
    assert (c.optimizer, c.schedule, c.batchwise, c.train_mask) == ("adam", "constant", True, True)
    assert math.isclose(c.effective_lr, 0.03 * 16 / 256)
    s = SPromptsConfig()
    assert (s.prompt_length, s.kmeans_k, s.optimizer, s.lr, s.momentum, s.schedule, s.epochs, s.batch_size,
            s.weight_decay) == (10, 5, "sgd", 0.01, 0.9, "cosine", 10, 128, 2e-4)
    d = DualPromptConfig()
    assert (d.pool_size, d.top_n, d.prompt_length, d.g_length, tuple(d.g_layers), tuple(d.e_layers)) == \
        (10, 1, 5, 5, (0, 1), (2, 3, 4))
    assert (d.surrogate_weight, d.batch_size, d.use_prompt_mask, d.shared_prompt_pool) == (1.0, 24, True, True)


def test_hooked_forward_is_timms_forward():
    vit, x = backbone(), torch.randn(3, 3, 16, 16)
    ref = vit.forward_features(x)
    t = embed_tokens(vit, x)
    assert torch.equal(vit.norm(vit.blocks(t)), ref)
    for blk in vit.blocks:
        t = prefix_block(blk, t, None)
    torch.testing.assert_close(vit.norm(t), ref)


def test_prefix_attention_is_attention_over_prefix_and_tokens():
    attn = backbone().blocks[0].attn
    B, N, L, D, H = 2, 5, 3, 48, attn.num_heads
    x, prefix = torch.randn(B, N, D), torch.randn(B, 2, L, D)
    q, k, v = attn.qkv(x).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)
    pk, pv = (prefix[:, i].reshape(B, L, H, D // H).transpose(1, 2) for i in (0, 1))
    w = (q @ torch.cat([pk, k], 2).transpose(-1, -2) / math.sqrt(D // H)).softmax(-1)
    expected = attn.proj((w @ torch.cat([pv, v], 2)).transpose(1, 2).reshape(B, N, D))
    torch.testing.assert_close(prefix_attention(attn, x, prefix), expected)
    assert not torch.allclose(prefix_attention(attn, x, None), expected)


# ----------------------------------------------------------------------------- shapes, counts, frozen backbone
@pytest.mark.parametrize("name,kind,opts", [("l2p", "class", {}), ("dualprompt", "class", DP_LAYERS),
                                            ("sprompts", "domain", {}), ("sprompts", "domain", {"shared_head": True})])
def test_shapes_and_trainable_params_match_formula(name, kind, opts):
    cls = METHODS[name]
    cfg, C, T = cls.config_cls.from_dict(opts), 6, 3
    m = cls(backbone(), kind, C, T, cfg)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 0, 1])
    for t in range(T):
        m.begin_task(t, [2 * t, 2 * t + 1] if kind == "class" else list(range(C)))
        assert m.num_trainable() == cls.expected_trainable_params(cfg, 48, C, t + 1)
    m.train()
    loss, logs = m.observe(x, y + 2 * (T - 1) if kind == "class" else y)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert grads and not any(n.startswith("backbone.") for n in grads), grads
    if name == "sprompts":  # the heads/prompts of past domains are frozen
        m.identifier.add_task(0, torch.randn(10, 48))
    m.eval()
    assert m.predict(x).shape == (4, C)
    spelled_out = {"l2p": 10 * 5 * 48 + 10 * 48 + 48 * C + C,  # M*Lp*D + M*D + D*C + C
                   "dualprompt": 2 * 5 * 48 * 1 + 2 * 5 * 48 * 1 * 10 + 10 * 48 + 48 * C + C,  # |G|=|E|=1
                   "sprompts": T * 10 * 48 + (1 if opts else T) * (48 * C + C)}
    assert m.num_trainable() == spelled_out[name]


@pytest.mark.parametrize("name,opts,kind", [("l2p", {}, "class"), ("dualprompt", DP_LAYERS, "class"),
                                            ("sprompts", {"lr": 0.05}, "domain")])
def test_backbone_bit_identical_and_prompts_trained(name, opts, kind, toy_scenario):
    sc = toy_scenario(kind, num_tasks=2, classes=4, per_class=8)
    r = runner(name, sc, epochs=1, **opts)
    m, before = r.method, state_fingerprint(r.backbone)
    for t, task in enumerate(sc.tasks):
        m.begin_task(t, task.classes)
        prompts = {n: p.detach().clone() for n, p in m.named_parameters() if "prompt" in n}
        r.train_task(t)
        m.end_task(t, r.context(task))
        assert any(not torch.equal(p, prompts[n]) for n, p in m.named_parameters() if n in prompts), "no prompt trained"
    assert state_fingerprint(r.backbone) == before


def test_sprompts_refuses_class_incremental_scenarios(toy_scenario):
    with pytest.raises(ValueError, match="needs a domain-incremental scenario.*class-incremental"):
        run("sprompts", toy_scenario("class", num_tasks=2, classes=4, per_class=4))


def test_dualprompt_refuses_missing_layers():
    with pytest.raises(ValueError, match=r"layers \[2, 3, 4\] do not exist in this 2-block backbone"):
        DualPrompt(backbone(), "class", 4, 2, DualPromptConfig())


# ----------------------------------------------------------------------------- vectorised selection, precision
@pytest.mark.parametrize("name,kind,opts", [("l2p", "class", {"batchwise": False}), ("dualprompt", "class", DP_LAYERS),
                                            ("sprompts", "domain", {})])
def test_batched_selection_equals_one_sample_at_a_time(name, kind, opts):
    cls = METHODS[name]
    torch.manual_seed(0)  # keys and inputs: one fixed draw, independent of the tests run before
    m = cls(backbone(), kind, 4, 3, cls.config_cls.from_dict(opts))
    for t in range(3):
        m.begin_task(t, [0, 1, 2, 3])
    m.eval()
    x = torch.randn(6, 3, 16, 16) * torch.linspace(0.2, 3, 6).view(6, 1, 1, 1) + torch.linspace(-2, 2, 6).view(6, 1, 1, 1)
    with torch.no_grad():
        if name == "sprompts":  # each sample through its own domain's prompt and head
            tid = torch.tensor([0, 1, 2, 2, 1, 0])
            batched = m.heads(m.peft_features(x, tid), tid)
            alone = torch.cat([m.heads(m.peft_features(x[i:i + 1], tid[i:i + 1]), tid[i:i + 1]) for i in range(6)])
        else:
            q = m.query(x)
            m.pool.keys[: len(x)] = q  # key i is sample i's own query: every sample selects differently
            idx, _ = m.pool.select(q)
            assert len(set(map(tuple, idx.tolist()))) > 1, "test needs samples that select different prompts"
            batched = m.predict(x)
            alone = torch.cat([m.predict(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,kind,opts", [("l2p", "class", {}), ("dualprompt", "class", DP_LAYERS),
                                            ("sprompts", "domain", {})])
def test_bf16_autocast_runs_and_backpropagates(name, kind, opts):
    cls = METHODS[name]
    m = cls(backbone(), kind, 4, 2, cls.config_cls.from_dict(opts))
    m.begin_task(0, [0, 1])
    m.train()
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 1, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = m.observe(x, y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    if name == "sprompts":
        m.identifier.add_task(0, torch.randn(10, 48))
    m.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m.predict(x)
    assert out.dtype == torch.float32 and torch.isfinite(out[:, :2]).all()


# ----------------------------------------------------------------------------- what the keys learn
def test_l2p_keys_learn_to_pick_different_prompts_for_separable_tasks():
    """All keys start equal, so every sample first picks the same prompt. Training task 0 pulls that
    key towards task 0's queries; task 1's queries then prefer a fresh key, so the tasks end up
    with different prompts, each key next to its task's queries."""
    r = runner("l2p", two_world_scenario(), top_n=1, epochs=2)
    m, tasks = r.method, r.scenario.tasks
    with torch.no_grad():
        q = torch.cat([m.query(x) for task in tasks for x, _ in r.model_batches(task.train)])
        m.pool.keys.copy_(F.normalize(q, dim=1).mean(0).expand_as(m.pool.keys))
    before = [int(selection_histogram(r, task).argmax()) for task in tasks]
    assert before[0] == before[1]
    train_all(r)
    hists = [selection_histogram(r, task) for task in tasks]
    after = [int(h.argmax()) for h in hists]
    assert after[0] != after[1], hists
    for t, task in enumerate(tasks):
        assert hists[t][after[t]] == len(task.test), hists  # every test sample of the task agrees
        with torch.no_grad():
            qt = F.normalize(torch.cat([m.query(x) for x, _ in r.model_batches(task.test)]), dim=1).mean(0)
            sims = F.normalize(m.pool.keys, dim=1) @ qt
        assert int(sims.argmax()) == after[t]


def test_dualprompt_keys_route_test_samples_to_their_tasks_e_prompt():
    """Training uses E-prompt t for task t (prompt mask) and pulls key t to task t's queries; at test
    time, with no task identity, the keys must send task t's samples to E-prompt t."""
    r = train_all(runner("dualprompt", two_world_scenario(), epochs=3, lr=0.3, **DP_LAYERS))
    for t, task in enumerate(r.scenario.tasks):
        h = selection_histogram(r, task)
        assert h[t] / h.sum() > 0.9, (t, h)


def test_dualprompt_masks_prompts_in_training_and_shares_the_pool():
    m = DualPrompt(backbone(), "class", 4, 2, DualPromptConfig(**DP_LAYERS))
    m.begin_task(0, [0, 1])
    m.train()
    m.observe(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 0]))
    assert m._match[1].tolist() == [[0]] * 3  # task 0 trains E-prompt 0 whatever the query says
    with torch.no_grad():
        m.e_prompts[0].add_(1.0)
    m.begin_task(1, [2, 3])  # task 1's E-prompt starts from task 0's
    assert torch.equal(m.e_prompts[1], m.e_prompts[0]) and not torch.equal(m.e_prompts[2], m.e_prompts[0])
    m.observe(torch.randn(3, 3, 16, 16), torch.tensor([2, 3, 2]))
    assert m._match[1].tolist() == [[1]] * 3


# ----------------------------------------------------------------------------- S-Prompts routing
def test_sprompts_kmeans_identifies_separable_domains_and_learns(toy_scenario):
    sc = toy_scenario("domain", num_tasks=3, classes=4, per_class=24)
    res = run("sprompts", sc, epochs=4, lr=0.05)
    tid, R = res["task_id_accuracy"], res["accuracy_matrix"]
    assert len(tid) == 3 and all(len(row) == i + 1 for i, row in enumerate(tid))
    assert min(tid[-1]) > 100 / 3 + 40, tid  # chance: 33%
    assert R[0][0] > 25 + 20, R  # 4 classes: chance 25%
    assert res["trainable_params"] == SPrompts.expected_trainable_params(SPromptsConfig(), 48, 4, 3)


def test_sprompts_oracle_mode_uses_the_true_domain(toy_scenario, monkeypatch):
    sc = toy_scenario("domain", num_tasks=2, classes=4, per_class=8)
    monkeypatch.setattr("cl_peft_lib.methods.selection.KMeansTaskIdentifier.identify",
                        lambda self, f: torch.zeros(len(f), dtype=torch.long))  # k-means would always say domain 0
    r = train_all(runner("sprompts", sc, epochs=1))
    assert r.evaluate(1)[1] == [100.0, 0.0]
    from cl_peft_lib.evaluation import EvalConfig

    assert r.evaluate(1, EvalConfig(oracle_task_id=True))[1] == [100.0, 100.0]  # an evaluation setting: no retraining


def test_sprompts_checkpoint_roundtrip(toy_scenario):
    r = train_all(runner("sprompts", toy_scenario("domain", num_tasks=2, classes=4, per_class=8), epochs=1))
    x = next(r.model_batches(r.scenario.tasks[1].test))[0]
    fresh = SPrompts(backbone(), "domain", 4, 2, r.mcfg)
    for t, task in enumerate(r.scenario.tasks):
        fresh.begin_task(t, task.classes)
    fresh.load_checkpoint_state(r.method.checkpoint_state())
    fresh.eval()
    assert torch.equal(fresh.predict(x), r.method.predict(x))


# ----------------------------------------------------------------------------- smoke learning
@pytest.mark.parametrize("name,opts", [("l2p", {"epochs": 10}), ("dualprompt", {"epochs": 5, "lr": 0.1, **DP_LAYERS})])
def test_smoke_run_learns_above_chance(name, opts, toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=8, per_class=24)
    res = run(name, sc, **opts)
    R = res["accuracy_matrix"]
    assert res["status"] == "complete" and [len(row) for row in R] == [1, 2]
    assert R[0][0] > 25 + 20, R  # 4 classes in task 0: chance 25%
    cfg = METHODS[name].config_cls.from_dict({k: v for k, v in opts.items() if k not in ("epochs", "lr")})
    assert res["trainable_params"] == METHODS[name].expected_trainable_params(cfg, 48, 8, 2)
    counts = res["extra"]["selection_counts_last_eval"]
    assert len(counts) == cfg.pool_size and sum(counts) > 0


def test_rerunning_a_finished_run_reports_the_same_results(toy_scenario, tmp_path):
    """A complete run re-run with the same out_dir resumes past its last task: same matrix, metrics and
    trainable-parameter count (S-Prompts creates its per-domain modules in begin_task)."""
    sc = toy_scenario("domain", num_tasks=2, classes=4, per_class=8)

    def go():
        cfg = RunConfig("sprompts", sc.name, "smoke", device="cpu", backbone=BB, progress=False,
                        out_dir=str(tmp_path), method_options={"epochs": 1})
        return run_continual(cfg, scenario=sc, backbone=backbone(0))

    first, again = go(), go()
    assert "resumed_from_task" not in again  # the complete result is the answer: nothing reruns
    assert first["trainable_params"] == again["trainable_params"] > 0
    assert (again["accuracy_matrix"], again["metrics"]) == (first["accuracy_matrix"], first["metrics"])
