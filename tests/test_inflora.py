"""InfLoRA on the micro test ViT, CPU only: designed A_t, gradients, merging, the paper's equations, runs."""
from __future__ import annotations

import copy
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.methods import TaskContext
from cl_peft_lib.methods.inflora import InfLoRA, InfLoRAConfig
from cl_peft_lib.methods.selection import query_features
from lora_native_helpers import assert_resume_identical, run_toy

D, DEPTH, C = 48, 2, 4  # test_vit_micro: embed_dim 48, depth 2


def _x(n: int = 8, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) + shift


def _ctx(xs: list[torch.Tensor]) -> TaskContext:
    """A TaskContext whose task's training data are the batches ``xs``."""
    return TaskContext(SimpleNamespace(train=xs), torch.device("cpu"), lambda ds: ((x, None) for x in ds), nullcontext)


def _train_like(m: InfLoRA, seed: int) -> None:
    """Stand-in for training: random values in the current task's B."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for br in m.branches.values():
            br.B[br.active].copy_(0.3 * torch.randn(br.B[br.active].shape, generator=g))


def _two_tasks(cfg: InfLoRAConfig) -> InfLoRA:
    """Task 0 designed, 'trained', merged and memorised; task 1 begun and designed (on other inputs)."""
    m = InfLoRA(create_backbone("test_vit_micro"), "class", C, 3, cfg).eval()
    m.begin_task(0, [0, 1])
    m.design([_x(8, 0)])
    _train_like(m, 1)
    m.end_task(0, _ctx([_x(8, 0), _x(8, 2)]))
    m.begin_task(1, [2, 3])
    m.design([_x(8, 3, shift=1.0)])
    return m


CFG = InfLoRAConfig(rank=3, threshold=0.6, threshold_end=0.7)  # a memory well below D: room for new directions


def test_designed_A_is_orthogonal_to_earlier_tasks_subspace():
    m = _two_tasks(CFG)
    for br in m.branches.values():
        M = br.occupied()
        assert 0 < M.shape[1] <= D - CFG.rank
        torch.testing.assert_close(M.T @ M, torch.eye(M.shape[1]), atol=1e-5, rtol=0)  # an orthonormal memory
        A1 = br.A(1)
        torch.testing.assert_close(A1 @ A1.T, torch.eye(CFG.rank) / 3, atol=1e-5, rtol=0)  # SVD rows / sqrt(3)
        assert (A1 @ M).abs().max() < 1e-5  # interference-free: A_1 x = 0 on the earlier subspace
        assert (br.A(0) @ M).abs().max() > 1e-2  # (task 0's own A is not: the test can fail)


def test_only_B_of_the_current_task_receives_gradients():
    m = _two_tasks(CFG)
    m.train()
    loss, _ = m.observe(_x(6, 4), torch.tensor([2, 3, 2, 3, 2, 3]))
    loss.backward()
    got = {n for n, p in m.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    want = {"head.weight", "head.bias"} | {f"branches.{n}.B.1" for n in m.branches}
    assert got == want
    assert {n for n, p in m.named_parameters() if p.requires_grad} == want  # B_0 is frozen (and merged)
    assert not any(p.requires_grad for p in m.backbone.parameters())
    for br in m.branches.values():  # the designed A's are buffers, never parameters
        assert {"A0", "A1"} <= dict(br.named_buffers()).keys()
        assert all(n.startswith("B.") for n, _ in br.named_parameters())


def test_merged_forward_equals_unmerged_and_inference_runs_no_branch():
    m = _two_tasks(CFG)
    _train_like(m, 5)
    x = _x(6, 7)
    with torch.no_grad():
        unmerged = m.features(x)  # task 0 in the weights, task 1 through the hook
        for br in m.branches.values():
            br.merge(2)
        merged = m.features(x)
        assert all(br.active is None for br in m.branches.values())
        for br in m.branches.values():  # with no branch active, the hook adds nothing
            br.active = 1
        twice = m.features(x)
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(twice, merged, atol=1e-3)


def test_forward_and_design_match_the_papers_equations():
    """An independent implementation: qkv inputs collected by plain hooks on a copy, C_t = E[x x^T],
    A_t from the SVD of (I - M M^T) C_t, and W_k, W_v edited by hand with sum_t B_t A_t."""
    m = _two_tasks(CFG)
    _train_like(m, 5)
    frozen = create_backbone("test_vit_micro")  # the same seed: the same pretrained weights W_0
    ref = copy.deepcopy(frozen)
    names = list(m.branches)
    qkvs = {n.replace(".", "_"): mod for n, mod in ref.named_modules() if n.endswith("attn.qkv")}
    assert set(qkvs) == set(names)
    # task 0's design: the inputs of the pretrained ViT's qkv layers
    seen = {n: [] for n in names}
    hooks = [qkvs[n].register_forward_hook(lambda mod, i, o, n=n: seen[n].append(i[0].reshape(-1, D))) for n in names]
    with torch.no_grad():
        query_features(ref, _x(8, 0))
    for h in hooks:
        h.remove()
    for n in names:
        X = torch.cat(seen[n]).double()
        U = torch.linalg.svd(X.T @ X / len(X))[0][:, :CFG.rank]
        A0 = m.branches[n].A(0).double() * 3 ** 0.5
        torch.testing.assert_close(A0.T @ A0, U @ U.T, atol=1e-5, rtol=0)  # the same row space (signs aside)
    # the forward: W_k, W_v + sum_t B_t A_t (k and v halves of B), queries untouched
    with torch.no_grad():
        for n in names:
            br, W = m.branches[n], qkvs[n].weight
            for t in range(2):
                W[D:] += br.B[t] @ br.A(t)
        x = _x(6, 8)
        torch.testing.assert_close(m.features(x), query_features(ref, x), atol=1e-5, rtol=1e-5)
        assert torch.equal(m.backbone.blocks[0].attn.qkv.weight[:D], frozen.blocks[0].attn.qkv.weight[:D])


def test_trainable_parameter_count_closed_form():
    cfg = InfLoRAConfig(rank=3)
    m = InfLoRA(create_backbone("test_vit_micro"), "class", C, 3, cfg)
    for t in range(3):
        m.begin_task(t, [t])
        # the B's of every task so far (k and v rows: 2D x r per block) plus one head; A's are designed buffers
        assert m.num_trainable() == (t + 1) * DEPTH * 3 * 2 * D + D * C + C == \
            InfLoRA.expected_trainable_params(cfg, D, C, T=t + 1, depth=DEPTH)
    cfg = InfLoRAConfig(rank=2, layers=(1,))
    m = InfLoRA(create_backbone("test_vit_micro"), "class", C, 2, cfg)
    m.begin_task(0, [0])
    assert m.num_trainable() == 1 * 2 * 2 * D + D * C + C == InfLoRA.expected_trainable_params(cfg, D, C, depth=DEPTH)


def test_config_validated():
    with pytest.raises(ValueError, match="threshold"):
        InfLoRAConfig(threshold=1.5)
    with pytest.raises(ValueError, match="threshold_end"):
        InfLoRAConfig(threshold=0.9, threshold_end=0.8)
    with pytest.raises(ValueError, match="rank"):
        InfLoRAConfig(rank=0)
    assert InfLoRAConfig(layers=1).layers == (1,)
    c = InfLoRAConfig()  # the official cifar100_inflora.json
    assert (c.rank, c.lr, c.epochs, c.batch_size, c.optimizer, c.threshold, c.threshold_end) == \
        (10, 0.0005, 20, 128, "adam", 0.95, 1.0)


def test_checkpoint_round_trip_restores_merged_weights():
    a = _two_tasks(CFG)
    _train_like(a, 5)
    a.end_task(1, _ctx([_x(8, 3, shift=1.0)]))
    b = InfLoRA(create_backbone("test_vit_micro"), "class", C, 3, CFG).eval()
    for t in range(2):  # the loop replays begin_task, then loads
        b.begin_task(t, [t])
    b.load_checkpoint_state(a.checkpoint_state())
    x = _x(6, 9)
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)
    assert all(br.active is None for br in b.branches.values())


# ----------------------------------------------------------------------------- end-to-end runs
OPTIONS = {"epochs": 4, "batch_size": 8, "lr": 0.01}


@pytest.mark.parametrize("kind", ["class", "domain"])
def test_smoke_run_learns_above_chance(kind):
    res, m = run_toy("inflora", kind, OPTIONS, num_tasks=2)
    R = res["accuracy_matrix"]
    # chance: 1/4 over all classes (domain), 1/2 on the first class-incremental task's pair, 1/4 after
    assert min(R[t][t] for t in range(len(R))) > 70.0, R
    assert sum(R[-1]) / len(R[-1]) > 40.0, R
    assert all(int(br.k) > 0 and br.active is None for br in m.branches.values())  # memorised, merged
    assert res["trainable_params"] == InfLoRA.expected_trainable_params(m.cfg, D, C, T=2, depth=DEPTH)


def test_resume_after_kill_gives_identical_matrix(tmp_path):
    """The checkpoint holds the designed A's, the trained B's (re-merged on load) and the memory."""
    assert_resume_identical("inflora", {**OPTIONS, "epochs": 1}, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_recorded_covariance_is_float32_under_autocast(dtype):
    """The inputs' ``sum x x^T`` is accumulated in float32 under mixed precision too: under fp16 autocast (the T4
    path, ``CL_PEFT_AMP=fp16``) a half-precision sum overflowed to inf and the SVD of the memory update never
    returned on the GPU (the fp16 benchmark of InfLoRA hung). Inputs of size ~100 make an fp16 sum overflow."""
    m = InfLoRA(create_backbone("test_vit_micro"), "class", C, 3, CFG).eval()
    m.begin_task(0, [0, 1])
    br = next(iter(m.branches.values()))
    x = 100 * torch.randn(4, 17, D, generator=torch.Generator().manual_seed(0))
    br.recording = True
    with torch.autocast("cpu", dtype=dtype):
        br._hook(br._qkv[0], (x,), torch.zeros(4, 17, 3 * D))
    br.recording = False
    cov = br.take_covariance()
    xf = x.reshape(-1, D).double()
    ref = xf.T @ xf / len(xf)
    assert torch.isfinite(cov).all()
    assert torch.allclose(cov, ref, rtol=1e-5, atol=1e-4 * ref.abs().max().item())
