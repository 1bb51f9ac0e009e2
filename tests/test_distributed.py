"""Data-parallel training (torchrun, gloo on CPU) and the grid runner.

The central check: a 2-process ``torchrun`` run gives the single-process accuracy matrix.
Why only up to a tolerance: each rank takes half of every batch (the union of the ranks'
i-th batches *is* the single process's i-th batch, see ``test_shards_partition_the_batches``)
and the averaged half-batch gradients equal the full-batch gradient only up to the order
of float summation (and one thread per rank instead of two changes the kernels' order too);
over many steps these ~1e-7 differences can flip the prediction of a test image near a
decision boundary. The methods used here (``finetune``, ``linear_probe``, ``ncm``) have no
batch-size-dependent operation (a ViT has LayerNorm, not BatchNorm; no batch-wise prompt
vote), so nothing else differs. Tolerance: every entry within ``TOL = 2.0`` points, i.e. at
most two flipped images of the toy's 128 test images per domain. Sharper checks that the
accuracy tolerance alone would miss: the fine-tuned weights agree to 1e-4 (measured 1.8e-5)
and the last training loss to 1e-4 (relative). Fine-tuning uses SGD without clipping here:
Adam divides by the gradient's magnitude, so it would hide a wrong gradient scale (e.g. a
sum instead of a mean over ranks) and blow float noise in near-zero gradients up to ~1e-4.
(Measured on this project's CPU machine: identical matrices for all three runs.)
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from cl_peft_lib import distributed as D
from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.cli import main as cli_main
from cl_peft_lib.grid import child_env, make_slots
from cl_peft_lib.loop import RunConfig, run_continual

ROOT = Path(__file__).resolve().parents[1]
BB = "test_vit_micro"
TOL = 2.0  # accuracy points, per matrix entry
TOY = dict(kind="domain", num_tasks=3, per_class=32, classes=4)  # 128 train / 128 test images per domain
FT = {"epochs": 2, "optimizer": "sgd", "lr": 0.05, "grad_clip": None}  # see the module docstring
LP = {"epochs": 2}
NCM_CLI = ["run", "--method", "ncm", "--benchmark", "offline-dil", "--profile", "smoke", "--device", "cpu",
           "--backbone", BB, "--quiet"]

# Runs under torchrun, one copy per rank. Assertions that fail make torchrun exit non-zero.
DRIVER = textwrap.dedent('''
    import json, os, sys
    import torch
    sys.path[:0] = [{root!r}, {tests!r}]
    from conftest import make_toy_scenario
    from cl_peft_lib import distributed as D
    from cl_peft_lib.backbones import create_backbone
    from cl_peft_lib.cli import main as cli_main
    from cl_peft_lib.loop import RunConfig, run_continual

    out = sys.argv[1]
    rank = int(os.environ["RANK"])

    def run(method, opts, folder):
        sc = make_toy_scenario(**{toy!r})
        cfg = RunConfig(method, sc.name, "smoke", device="cpu", out_dir=os.path.join(out, folder), backbone={bb!r},
                        progress=False, method_options=opts)
        torch.manual_seed(0)  # the random test backbone: the same weights as in the single process
        return run_continual(cfg, scenario=sc, backbone=create_backbone({bb!r}))

    # 1. the CLI under torchrun (creates the process group; rank 0 alone prints)
    assert cli_main({ncm_cli!r} + ["--out", os.path.join(out, "ncm")]) == 0
    # 2. a fresh data-parallel run (reuses the group)
    res = run("finetune", {ft!r}, "finetune")
    assert res["distributed"]["world_size"] == 2, res.get("distributed")
    # 3. gradient averaging: a used on both ranks, b on rank 1 only, c on none
    a, b, c = (torch.nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), 1.0 + 2 * rank)
    if rank == 1:
        b.grad = torch.full((3,), 4.0)
    loss = D.average_gradients([a, b, c], torch.tensor(1.0 + 2 * rank))
    assert float(loss) == 2.0 and torch.equal(a.grad, torch.full((3,), 2.0)), (loss, a.grad)
    assert torch.equal(b.grad, torch.full((3,), 2.0)) and c.grad is None, (b.grad, c.grad)
    # 4. resume under DDP: every rank loads the checkpoint the single process left after task 0
    res = run("linear_probe", {lp!r}, "lp_resume")
    assert res["resumed_from_task"] == 0, res.get("resumed_from_task")
    print(f"rank {{rank}} ok", flush=True)
''')


def _toy():
    from conftest import make_toy_scenario

    return make_toy_scenario(**TOY)


def _single(method, opts, out, step_callback=None):
    sc = _toy()
    cfg = RunConfig(method, sc.name, "smoke", device="cpu", out_dir=str(out), backbone=BB, progress=False,
                    method_options=opts)
    torch.manual_seed(0)  # the random test backbone: the same weights as on every rank
    return run_continual(cfg, scenario=sc, backbone=create_backbone(BB), step_callback=step_callback)


def _assert_close(single, ddp, what):
    assert [len(r) for r in single] == [len(r) for r in ddp], (what, single, ddp)
    worst = max(abs(x - y) for rs, rd in zip(single, ddp) for x, y in zip(rs, rd))
    assert worst <= TOL, f"{what}: single {single} vs 2 ranks {ddp} (max diff {worst:.2f} > {TOL})"


# ---------------------------------------------------------------------- no processes
@pytest.mark.parametrize("n,world,shuffle", [(10, 2, True), (11, 2, True), (7, 3, False), (2, 4, True)])
def test_shard_indices_equal_distributed_sampler(n, world, shuffle):
    from torch.utils.data import DistributedSampler

    ds = list(range(n))
    for r in range(world):
        s = DistributedSampler(ds, num_replicas=world, rank=r, shuffle=shuffle, seed=123)
        s.set_epoch(5)
        assert D.shard_indices(n, D.Shard(r, world, 123, 5), shuffle).tolist() == list(s)
        assert list(D.shard_sampler(ds, D.Shard(r, world, 123, 5), shuffle)) == list(s)
    # evaluation shards (no padding) partition the data: nothing missing, nothing counted twice
    parts = [D.shard_indices(n, D.Shard(r, world, pad=False)).tolist() for r in range(world)]
    assert sorted(sum(parts, [])) == list(range(n))


def test_shards_partition_the_batches():
    """With a per-rank batch of B/2, the two ranks' i-th batches together are the single process's i-th batch."""
    n, B, seed, epoch = 96, 32, 7, 1
    single = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    shards = [D.shard_indices(n, D.Shard(r, 2, seed, epoch), shuffle=True) for r in range(2)]
    for i in range(n // B):
        union = torch.cat([s[i * B // 2:(i + 1) * B // 2] for s in shards])
        assert sorted(union.tolist()) == sorted(single[i * B:(i + 1) * B].tolist())


@pytest.mark.parametrize("shard,shuffle", [(D.Shard(1, 2, 5, 3), True), (D.Shard(0, 3, 5, 0), True),
                                           (D.Shard(1, 3, pad=False), False)])
def test_dataloader_path_reads_the_same_shard(shard, shuffle):
    """File-backed data (DataLoader + DistributedSampler with set_epoch) and in-memory data (sliced
    permutation) give a rank the same batches."""
    from cl_peft_lib.data.base import TensorImageDataset, has_fast_batches
    from cl_peft_lib.loop import batches

    class Slow(torch.utils.data.Dataset):  # no get_batch: the DataLoader path
        def __init__(self, ds):
            self.ds = ds

        def __len__(self):
            return len(self.ds)

        def __getitem__(self, i):
            return self.ds[i]

    fast = TensorImageDataset(torch.arange(11, dtype=torch.uint8).view(11, 1, 1, 1).expand(11, 1, 2, 2).clone(),
                              torch.arange(11))
    slow = Slow(fast)
    assert has_fast_batches(fast) and not has_fast_batches(slow)
    a = [y.tolist() for _, y in batches(fast, 2, shuffle, shard=shard)]
    b = [y.tolist() for _, y in batches(slow, 2, shuffle, shard=shard)]
    assert a == b and sum(a, []) == D.shard_indices(11, shard, shuffle).tolist()


def test_single_process_is_untouched():
    assert D.world_size() == 1 and D.rank() == 0 and D.is_main() and not D.is_distributed()
    assert D.init_from_env(torch.device("cpu")) is False  # no WORLD_SIZE: no process group
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    assert float(D.average_gradients([p], torch.tensor(5.0))) == 5.0 and torch.equal(p.grad, torch.full((2,), 3.0))


def test_grid_slots_and_child_env(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    slots = make_slots("1,0")
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == ["3", "2"] and all(s.device == "cuda" for s in slots)
    env = child_env(slots[0])
    assert env["NCCL_NVLS_ENABLE"] == "0" and env["CUDA_VISIBLE_DEVICES"] == "3" and "WORLD_SIZE" not in env
    with pytest.raises(ValueError, match="not among"):
        make_slots("2")
    assert [s.name for s in make_slots(None, workers=3)] == ["cpu0", "cpu1", "cpu2"]


# ---------------------------------------------------------------------- torchrun
def test_torchrun_gloo_matches_single_process(tmp_path):
    s_dir, d_dir = tmp_path / "single", tmp_path / "ddp"

    # The resume case: a single process killed during task 1 leaves a checkpoint after task 0.
    class Killed(Exception):
        pass

    def kill(task, step, method):
        if task == 1:
            raise Killed

    with pytest.raises(Killed):
        _single("linear_probe", LP, d_dir / "lp_resume", kill)

    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER.format(root=str(ROOT), tests=str(ROOT / "tests"), toy=TOY, bb=BB, ncm_cli=NCM_CLI,
                                    ft=FT, lp=LP))
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), CL_PEFT_DIST_BACKEND="gloo")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(driver), str(d_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=tmp_path, start_new_session=True)
    try:
        # the single-process references, computed while torchrun starts
        ft = _single("finetune", FT, s_dir / "finetune")
        lp = _single("linear_probe", LP, s_dir / "lp")
        assert cli_main(NCM_CLI + ["--out", str(s_dir / "ncm")]) == 0
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"torchrun took {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, out[-6000:]
    assert "rank 0 ok" in out and "rank 1 ok" in out, out[-3000:]
    assert out.count("accuracy matrix R[t][i]") == 1, out[-3000:]  # the CLI summary, from rank 0 only

    def load(folder):
        return json.loads((d_dir / folder / "results.json").read_text())

    # fresh data-parallel run vs single process
    d_ft = load("finetune")
    assert d_ft["status"] == "complete" and d_ft["distributed"]["world_size"] == 2
    print("finetune single:", ft["accuracy_matrix"], "\nfinetune 2 ranks:", d_ft["accuracy_matrix"])
    _assert_close(ft["accuracy_matrix"], d_ft["accuracy_matrix"], "finetune")
    for ls, ld in zip(ft["train_logs"], d_ft["train_logs"]):
        assert abs(ls["loss"] - ld["loss"]) <= 1e-4 * max(1.0, abs(ls["loss"])), (ft["train_logs"], d_ft["train_logs"])
    ck_s = torch.load(s_dir / "finetune" / "checkpoint.pt", weights_only=True)["state"]
    ck_d = torch.load(d_dir / "finetune" / "checkpoint.pt", weights_only=True)["state"]
    assert ck_s.keys() == ck_d.keys()
    worst = max((ck_s[k].float() - ck_d[k].float()).abs().max().item() for k in ck_s if ck_s[k].is_floating_point())
    print("max weight diff", worst)
    assert worst < 1e-4, f"trained weights differ by {worst}"

    # resumed under DDP from the single process's checkpoint
    d_lp = load("lp_resume")
    assert d_lp["status"] == "complete" and d_lp["resumed_from_task"] == 0
    assert d_lp["accuracy_matrix"][0] == lp["accuracy_matrix"][0]  # restored, not recomputed
    print("linear_probe single:", lp["accuracy_matrix"], "\nlinear_probe resumed on 2 ranks:", d_lp["accuracy_matrix"])
    _assert_close(lp["accuracy_matrix"], d_lp["accuracy_matrix"], "linear_probe (resumed)")

    # the CLI under torchrun: ncm (end_task on the full task on every rank, sharded evaluation)
    s_ncm = json.loads((s_dir / "ncm" / "results.json").read_text())
    d_ncm = load("ncm")
    print("ncm single:", s_ncm["accuracy_matrix"], "\nncm 2 ranks:", d_ncm["accuracy_matrix"])
    _assert_close(s_ncm["accuracy_matrix"], d_ncm["accuracy_matrix"], "ncm via the CLI")


# ---------------------------------------------------------------------- grid
def test_grid_runs_skips_and_survives_a_failure(tmp_path, capsys):
    from cl_peft_lib.store import run_dir

    out = tmp_path / "grid"
    args = ["grid", "--methods", "ncm,linear_probe", "--benchmarks", "offline-dil", "--seeds", "0,1",
            "--profile", "smoke", "--backbone", BB, "--workers", "2", "--root", str(out), "--opt", "lr=0.002",
            "--summary", str(out / "grid.json")]

    def folder(method, seed):  # the run store's folder of each run
        return run_dir("smoke", "offline-dil", method, seed, {"lr": 0.002}, BB, out)

    bad = folder("ncm", 1) / "checkpoint.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")  # this run fails; the other three must still finish

    assert cli_main(args) == 1
    grid = json.loads((out / "grid.json").read_text())
    assert grid["counts"] == {"total": 4, "ran": 4, "skipped": 0, "complete": 3, "failed": 1,
                              "not_started": 0}, grid["counts"]
    failed = [r for r in grid["runs"] if r["status"] == "failed"]
    assert [(r["method"], r["seed"]) for r in failed] == [("ncm", 1)] and "unreadable" in failed[0]["error"]
    cell = grid["summary"]["offline-dil"]
    assert cell["ncm"]["n"] == 1 and cell["linear_probe"]["n"] == 2
    lp_accs = [json.loads((folder("linear_probe", s) / "results.json").read_text())
               ["metrics"]["average_accuracy"] for s in (0, 1)]
    assert cell["linear_probe"]["average_accuracy"]["mean"] == pytest.approx(sum(lp_accs) / 2)
    assert cell["linear_probe"]["average_accuracy"]["std"] == pytest.approx(abs(lp_accs[0] - lp_accs[1]) / 2 ** 0.5)
    assert "FAILED" in capsys.readouterr().out

    def mtimes():
        return {p: p.stat().st_mtime_ns for p in out.glob("*/*/*/*/results.json")}

    before = mtimes()
    bad.unlink()
    assert cli_main(args) == 0  # only the failed run runs again
    grid = json.loads((out / "grid.json").read_text())
    assert grid["counts"] == {"total": 4, "ran": 1, "skipped": 3, "complete": 4, "failed": 0,
                              "not_started": 0}, grid["counts"]
    after = mtimes()
    assert len(after) == 4 and all(after[p] == t for p, t in before.items() if p.parent != folder("ncm", 1))

    assert cli_main(args) == 0  # everything finished: nothing runs, nothing is rewritten
    grid = json.loads((out / "grid.json").read_text())
    assert grid["counts"]["ran"] == 0 and grid["counts"]["skipped"] == 4
    assert mtimes() == after
    assert grid["summary"]["offline-dil"]["ncm"]["n"] == 2
    assert "ran 0, skipped 4, failed 0, not started 0 of 4" in capsys.readouterr().out
