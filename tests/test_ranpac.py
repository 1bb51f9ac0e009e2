"""RanPAC: the ridge classifier against numpy from the paper's equations, the reference's choice of
lambda, order-invariance of the accumulated statistics, parameter count, checkpoints, smoke learning."""
import numpy as np
import pytest
import torch

from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.methods import METHODS
from cl_peft_lib.methods.ranpac import RIDGE_GRID, RanPAC, RanPACConfig, select_ridge

from test_prompts import _one_thread, backbone, runner as _runner, train_all  # noqa: F401  (shared helpers; _one_thread is autouse)

BB = "test_vit_micro"  # D=48


def runner(scenario, seed=0, **opts):
    return _runner("ranpac", scenario, seed, **opts)


@torch.no_grad()
def frozen_features(r, ds):
    """Pre-logits features of the frozen backbone, straight from timm, and the labels (numpy)."""
    f, y = [], []
    for x, lab in r.model_batches(ds):
        f.append(r.backbone.forward_head(r.backbone.forward_features(x), pre_logits=True))
        y.append(lab)
    return torch.cat(f).double().numpy(), torch.cat(y).numpy()


def test_registered_with_reference_defaults_and_validated():
    assert METHODS["ranpac"] is RanPAC
    c = RanPACConfig()
    assert (c.proj_dim, c.epochs, c.ridge, c.ridge_fit_fraction) == (10000, 0, None, 0.8)
    assert np.allclose(c.ridges, 10.0 ** np.arange(-8, 9)) and len(RIDGE_GRID) == 17
    for bad, needle in [({"proj_dim": -1}, "proj_dim must be >= 0"), ({"ridge": 0.0}, "ridge must be > 0"),
                        ({"ridge_fit_fraction": 1.0}, "ridge_fit_fraction must be > 0 and < 1"),
                        ({"ridges": ()}, "ridges must be a non-empty"), ({"ridges": (1.0, -1.0)}, "> 0")]:
        with pytest.raises(ValueError, match=needle):
            RanPACConfig(**bad)


@pytest.mark.parametrize("proj_dim", [32, 0])
def test_trainable_params_closed_form(proj_dim):
    cfg, C = RanPACConfig(proj_dim=proj_dim), 6
    m = RanPAC(backbone(), "class", C, 3, cfg)
    for t in range(3):
        m.begin_task(t, [2 * t, 2 * t + 1])
        assert m.num_trainable() == RanPAC.expected_trainable_params(cfg, 48, C, t + 1)
    assert m.num_trainable() == (proj_dim or 48) * C  # W_o only; the random W (48 x M) is fixed, not counted
    assert m.param_groups()[0]["params"] == []  # nothing for an optimizer


def test_select_ridge_is_the_references_holdout_choice():
    """Fit on the first 80% of the rows, least held-out MSE of the one-hot targets; written with numpy inverses."""
    g = np.random.default_rng(0)
    n, M, C = 60, 40, 3
    y = g.integers(0, C, n)
    H = np.abs(g.normal(size=(n, M))) + 0.8 * np.eye(C)[y] @ g.normal(size=(C, M))  # noisy, n_fit < M
    Y = np.eye(C)[y]
    k = int(n * 0.8)
    losses = []
    for lam in RIDGE_GRID:
        W = np.linalg.inv(H[:k].T @ H[:k] + lam * np.eye(M)) @ (H[:k].T @ Y[:k])
        losses.append(np.mean((H[k:] @ W - Y[k:]) ** 2))
    best = RIDGE_GRID[int(np.argmin(losses))]
    assert best not in (RIDGE_GRID[0], RIDGE_GRID[-1]), losses  # the data make the grid's choice matter
    assert select_ridge(torch.tensor(H), torch.tensor(Y), RIDGE_GRID) == best


def test_forward_is_the_ridge_solution_of_the_paper(toy_scenario):
    """After two tasks: W_o = (G + lambda I)^-1 C with G = sum h h^T, C = sum h y^T, h = relu(f W), computed in
    numpy from the backbone's features; logits h W_o on the seen classes."""
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=12)
    r = train_all(runner(sc, proj_dim=64))
    m = r.method.eval()
    W = m.W_rand.double().numpy()
    Hs, Ys = [], []
    for task in sc.tasks:
        f, y = frozen_features(r, task.train)
        Hs.append(np.maximum(f @ W, 0))
        Ys.append(np.eye(4)[y])
    H, Y = np.concatenate(Hs), np.concatenate(Ys)
    lam = m.ridge_history[-1]
    assert len(m.ridge_history) == 2 and lam in RIDGE_GRID
    W_o = np.linalg.inv(H.T @ H + lam * np.eye(64)) @ (H.T @ Y)
    np.testing.assert_allclose(m.W_o.double().numpy(), W_o, rtol=2e-3, atol=2e-5 * np.abs(W_o).max())
    x = next(r.model_batches(sc.tasks[1].test))[0]
    f, _ = frozen_features(r, sc.tasks[1].test)
    expected = np.maximum(f[:len(x)] @ W, 0) @ W_o
    out = m.predict(x).double().numpy()
    np.testing.assert_allclose(out, expected, rtol=2e-3, atol=2e-4 * np.abs(expected).max())


def test_unseen_classes_are_not_scored():
    m = RanPAC(backbone(), "class", 6, 3, RanPACConfig(proj_dim=16))
    m.begin_task(0, [0, 1])
    out = m.eval().predict(torch.randn(2, 3, 16, 16))
    assert torch.isinf(out[:, 2:]).all() and torch.isfinite(out[:, :2]).all()


def test_accumulating_task_by_task_equals_one_batch_of_all_data(toy_scenario):
    """G and C are sums: the stream (task 0 then task 1, through end_task) and one shuffled batch of all the data
    give the same statistics and, for a fixed lambda, the same classifier."""
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=12)
    stream = train_all(runner(sc, proj_dim=48, ridge=0.1)).method
    once = RanPAC(backbone(), "class", 4, 2, stream.cfg)
    once.load_state_dict({"W_rand": stream.W_rand}, strict=False)
    r = runner(sc, proj_dim=48)
    f = torch.cat([torch.tensor(frozen_features(r, t.train)[0]) for t in sc.tasks]).float()
    y = torch.cat([torch.tensor(frozen_features(r, t.train)[1]) for t in sc.tasks])
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3))
    once.accumulate(f[perm], y[perm])
    once.solve(0.1)
    torch.testing.assert_close(once.G, stream.G, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(once.C_sum, stream.C_sum, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(once.W_o, stream.W_o, rtol=1e-3, atol=1e-5)
    assert stream.ridge_history == [0.1, 0.1]


def test_checkpoint_roundtrip(toy_scenario):
    sc = toy_scenario("domain", num_tasks=2, classes=4, per_class=8)
    r = train_all(runner(sc, proj_dim=32))
    fresh = RanPAC(backbone(1), "domain", 4, 2, r.mcfg)  # another seed: another W_rand until loaded
    for t, task in enumerate(sc.tasks):
        fresh.begin_task(t, task.classes)
    fresh.load_checkpoint_state(r.method.checkpoint_state())
    x = next(r.model_batches(sc.tasks[1].test))[0]
    assert torch.equal(fresh.eval().predict(x), r.method.eval().predict(x))
    assert fresh.ridge_history == r.method.ridge_history


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_smoke_run_learns_above_chance(kind, toy_scenario):
    sc = toy_scenario(kind, num_tasks=2, classes=4, per_class=24)
    cfg = RunConfig("ranpac", sc.name, "smoke", device="cpu", backbone=BB, progress=False,
                    method_options={"proj_dim": 256})
    res = run_continual(cfg, scenario=sc, backbone=backbone(0))
    R = res["accuracy_matrix"]
    assert res["status"] == "complete" and [len(row) for row in R] == [1, 2]
    assert sum(R[-1]) / 2 > 25 + 30, R  # 4 classes: chance 25%
    assert res["trainable_params"] == RanPAC.expected_trainable_params(RanPACConfig(proj_dim=256), 48, 4, 2)
    assert len(res["extra"]["ridge_per_task"]) == 2


def test_projection_and_head_run_in_float32_under_bf16_autocast(toy_scenario):
    sc = toy_scenario("class", num_tasks=2, classes=4, per_class=8)
    r = train_all(runner(sc, proj_dim=64, ridge=1.0))
    x = next(r.model_batches(sc.tasks[0].test))[0]
    m = r.method.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = m.project(torch.randn(4, 48, dtype=torch.bfloat16))
        out = m.predict(x)
    assert h.dtype == torch.float32 and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out.argmax(1) == m.predict(x).argmax(1)).float().mean() > 0.9  # only the backbone ran in bf16
