"""SD-LoRA on the micro test ViT, CPU only: the decoupled update, frozen directions, counts, runs."""
from __future__ import annotations

import copy

import pytest
import torch

from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.methods.sdlora import SDLoRA, SDLoRAConfig
from cl_peft_lib.methods.selection import query_features
from lora_native_helpers import assert_resume_identical, run_toy

D, DEPTH, C = 48, 2, 4  # test_vit_micro: embed_dim 48, depth 2


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _randomize(m: SDLoRA, seed: int = 1) -> None:
    """Non-zero B's and magnitudes other than the initial 0.8."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for f in m.factors.values():
            for B in f.B:
                B.copy_(0.3 * torch.randn(B.shape, generator=g))
        for a in m.alphas:
            a.copy_(0.5 + torch.rand((), generator=g))


def test_forward_matches_the_equation():
    """W_q, W_v of a copy edited by hand: W_0 + sum_{i<t} alpha_i B_i A_i / ||B_i A_i||_F + alpha_t B_t A_t."""
    frozen = create_backbone("test_vit_micro")
    m = SDLoRA(copy.deepcopy(frozen), "class", C, 3, SDLoRAConfig(rank=3)).eval()
    for t in range(3):
        m.begin_task(t, [t])
    _randomize(m)
    ref = copy.deepcopy(frozen)
    with torch.no_grad():
        for name, mod in ref.named_modules():
            if not name.endswith("attn.qkv"):
                continue
            f = m.factors[name.replace(".", "_")]
            for j, rows in enumerate((slice(0, D), slice(2 * D, 3 * D))):  # q, v
                for i in range(3):
                    BA = f.B[i][j] @ f.A[i][j]
                    scale = m.alphas[i] / torch.linalg.matrix_norm(BA) if i < 2 else m.alphas[i]
                    mod.weight[rows] += scale * BA
        x = _x()
        ours = m.features(x)
        torch.testing.assert_close(ours, query_features(ref, x), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(ours, query_features(frozen, x), atol=1e-3)
        torch.testing.assert_close(m.factors["blocks_0_attn_qkv"].direction_norms()[0, 1],
                                   torch.linalg.matrix_norm(m.factors["blocks_0_attn_qkv"].B[0][1] @
                                                            m.factors["blocks_0_attn_qkv"].A[0][1]))


def test_fresh_task_changes_nothing():
    frozen = create_backbone("test_vit_micro")
    m = SDLoRA(copy.deepcopy(frozen), "class", C, 2, SDLoRAConfig()).eval()
    m.begin_task(0, [0, 1])
    x = _x()
    with torch.no_grad():
        assert torch.equal(m.features(x), query_features(frozen, x))  # B_0 = 0


def test_trainable_parameter_count_closed_form():
    cfg = SDLoRAConfig(rank=3)
    m = SDLoRA(create_backbone("test_vit_micro"), "class", C, 3, cfg)
    for t in range(3):
        m.begin_task(t, [t])
        # per task: A and B of q and v in every block (2 * r * (D + D) each) and one magnitude; one head
        assert m.num_trainable() == (t + 1) * (DEPTH * 2 * 3 * 2 * D + 1) + D * C + C == \
            SDLoRA.expected_trainable_params(cfg, D, C, T=t + 1, depth=DEPTH)
        want = {"head.weight", "head.bias"} | {f"alphas.{i}" for i in range(t + 1)} | \
            {f"factors.{n}.{w}.{t}" for n in m.factors for w in "AB"}
        assert {n for n, p in m.named_parameters() if p.requires_grad} == want  # earlier directions frozen
    cfg = SDLoRAConfig(rank=2, layers=1)
    m = SDLoRA(create_backbone("test_vit_micro"), "class", C, 2, cfg)
    m.begin_task(0, [0])
    assert m.num_trainable() == 1 * 2 * 2 * 2 * D + 1 + D * C + C == \
        SDLoRA.expected_trainable_params(cfg, D, C, depth=DEPTH)


def test_config_validated():
    with pytest.raises(ValueError, match="alpha_init"):
        SDLoRAConfig(alpha_init=0)
    with pytest.raises(ValueError, match="layers"):
        SDLoRAConfig(layers=(-1,))
    c = SDLoRAConfig()  # the official exps/sdlora_c100.json and models/sdlora.py
    assert (c.rank, c.lr, c.epochs, c.batch_size, c.optimizer, c.momentum, c.alpha_init) == \
        (10, 0.008, 20, 128, "sgd", 0.9, 0.8)


def test_checkpoint_round_trip():
    vit = create_backbone("test_vit_micro")
    a, b = (SDLoRA(copy.deepcopy(vit), "class", C, 2, SDLoRAConfig(rank=2)).eval() for _ in range(2))
    for m in (a, b):
        for t in range(2):
            m.begin_task(t, [2 * t, 2 * t + 1])
    _randomize(a)
    b.load_checkpoint_state(a.checkpoint_state())
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)


# ----------------------------------------------------------------------------- end-to-end runs
OPTIONS = {"epochs": 4, "batch_size": 8, "lr": 0.01}


class Snapshot(SDLoRA):
    """Copies task 0's factors and magnitude when task 1 begins."""

    snap: dict = {}

    def begin_task(self, task_id, classes):
        super().begin_task(task_id, classes)
        if task_id == 1:
            self.snap = {"factors": {n: (f.A[0].detach().clone(), f.B[0].detach().clone())
                                     for n, f in self.factors.items()},
                         "alpha": float(self.alphas[0].detach())}


@pytest.fixture(scope="module")
def runs():
    return {kind: run_toy("sdlora", kind, OPTIONS, spy=Snapshot, num_tasks=2) for kind in ("class", "domain")}


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_smoke_run_learns_above_chance(runs, kind):
    res, m = runs[kind]
    R = res["accuracy_matrix"]
    # chance: 1/4 over all classes (domain), 1/2 on the first class-incremental task's pair, 1/4 after
    assert min(R[t][t] for t in range(len(R))) > 70.0, R
    assert sum(R[-1]) / len(R[-1]) > 40.0, R
    assert res["trainable_params"] == SDLoRA.expected_trainable_params(m.cfg, D, C, T=2, depth=DEPTH)


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_earlier_direction_frozen_while_its_magnitude_learns(runs, kind):
    _, m = runs[kind]
    for n, f in m.factors.items():
        A0, B0 = m.snap["factors"][n]
        assert torch.equal(f.A[0], A0) and torch.equal(f.B[0], B0)  # bit-identical after training task 1
        assert B0.abs().sum() > 0 and f.B[1].abs().sum() > 0  # both tasks' factors did train
    assert float(m.alphas[0].detach()) != m.snap["alpha"]  # alpha_0 kept learning during task 1


def test_resume_after_kill_gives_identical_matrix(tmp_path):
    """The checkpoint holds every task's factors, the magnitudes and the head."""
    assert_resume_identical("sdlora", {**OPTIONS, "epochs": 1}, tmp_path)
