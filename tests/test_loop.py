"""The shared loop: end-to-end baselines, resume, and every bad input the loop must refuse."""
import json

import pytest
import torch

from cl_peft_lib.backbones import create_backbone, state_fingerprint
from cl_peft_lib.cli import main as cli_main
from cl_peft_lib.data.scenarios import build_benchmark
from cl_peft_lib.loop import CheckpointError, NonFiniteLossError, RunConfig, method_config, run_continual
from cl_peft_lib.profiles import get_profile

BB = "test_vit_micro"


@pytest.fixture(autouse=True)
def _no_augmentation(monkeypatch):
    """The loop's own tests train without augmentation (tests/test_reference_defaults.py covers it): these
    tiny runs must learn in one to three epochs."""
    from dataclasses import replace

    from cl_peft_lib.profiles import PROFILES

    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], train_augment="none"))


@pytest.fixture(scope="module")
def real_cil():
    """offline-cil on real data, 3 tasks of 10 classes, 30 train / 15 test images per class."""
    p = get_profile("smoke", train_per_class=30, test_per_class=15, cil_tasks=3)
    return build_benchmark("offline-cil", p, seed=0)


def _run(method, scenario, tmp_path=None, **kw):
    opts = kw.pop("opts", {})
    cb = kw.pop("step_callback", None)
    cfg = RunConfig(method, scenario.name, "smoke", seed=kw.pop("seed", 0), device="cpu",
                    out_dir=str(tmp_path) if tmp_path else None, method_options=opts, backbone=BB, progress=False, **kw)
    return run_continual(cfg, scenario=scenario, backbone=create_backbone(BB), step_callback=cb)


@pytest.mark.parametrize("method,opts", [("finetune", {"epochs": 3, "lr": 1e-3}), ("linear_probe", {"epochs": 3}),
                                         ("ncm", {}), ("joint", {"epochs": 3, "lr": 1e-3})])
def test_baselines_learn(method, opts, real_cil, tmp_path):
    res = _run(method, real_cil, tmp_path, opts=opts)
    R = res["accuracy_matrix"]
    assert res["status"] == "complete" and len(R) == 3 and [len(r) for r in R] == [1, 2, 3]
    chance = 100 / real_cil.num_classes  # the reference scoring: all 30 logits, also those of unseen classes
    assert R[0][0] > chance + 15.0, f"{method} did not learn task 0 (chance {chance:.1f}%): {R}"
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["accuracy_matrix"] == R and on_disk["metrics"] == res["metrics"]
    assert on_disk["provenance"]["backbone"] == "random:test_vit_micro"
    assert on_disk["trainable_params"] == res["trainable_params"]
    if method == "finetune":
        assert res["metrics"]["forgetting"] > 20.0, f"sequential fine-tuning should forget: {R}"
        assert R[-1][0] < R[0][0] - 20.0
    if method == "joint":  # trained on all data seen so far: the last row stays well above chance (3.3%)
        assert min(R[-1]) > 10.0, R
    if method == "ncm":
        assert res["trainable_params"] == 0


def test_frozen_backbone_stays_bit_identical(real_cil):
    bb = create_backbone(BB)
    before = state_fingerprint(bb)
    cfg = RunConfig("linear_probe", real_cil.name, "smoke", device="cpu", backbone=BB, progress=False,
                    method_options={"epochs": 1})
    run_continual(cfg, scenario=real_cil, backbone=bb)
    assert state_fingerprint(bb) == before


def test_resume_after_kill_gives_identical_matrix(real_cil, tmp_path):
    full = _run("finetune", real_cil, tmp_path / "full", opts={"epochs": 1, "lr": 1e-3})

    class Killed(Exception):
        pass

    def kill(task, step, method):
        if task == 2 and step == 1:
            raise Killed

    cfg = RunConfig("finetune", real_cil.name, "smoke", device="cpu", out_dir=str(tmp_path / "k"), backbone=BB,
                    progress=False, method_options={"epochs": 1, "lr": 1e-3})
    with pytest.raises(Killed):
        run_continual(cfg, scenario=real_cil, backbone=create_backbone(BB), step_callback=kill)
    partial = json.loads((tmp_path / "k" / "results.json").read_text())
    assert partial["status"] == "failed" and len(partial["accuracy_matrix"]) == 2  # finished tasks kept
    resumed = run_continual(cfg, scenario=real_cil, backbone=create_backbone(BB))
    assert resumed["resumed_from_task"] == 1
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_nan_loss_stops_and_keeps_finished_tasks(real_cil, tmp_path):
    def poison(task, step, method):
        if task == 1 and step == 0:
            with torch.no_grad():
                method.head.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError, match="task 1"):
        _run("linear_probe", real_cil, tmp_path, opts={"epochs": 1}, step_callback=poison)
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and "NonFiniteLossError" in res["error"]
    assert len(res["accuracy_matrix"]) == 1


def test_loss_check_interval_changes_no_number_and_names_the_first_bad_step(real_cil, tmp_path, monkeypatch):
    """The loop tests its losses every $CL_PEFT_LOSS_CHECK_EVERY steps (one host sync each) instead of
    after every step: the results are the same for any interval, and a NaN is still reported at its
    own step (not at the check that found it) with finished tasks kept."""
    runs = {}
    for every in ("1", "3", "1000"):
        monkeypatch.setenv("CL_PEFT_LOSS_CHECK_EVERY", every)
        runs[every] = _run("l2p", real_cil, opts={"epochs": 2, "pool_size": 4, "top_n": 2, "prompt_length": 2})
    for every in ("3", "1000"):
        assert runs[every]["accuracy_matrix"] == runs["1"]["accuracy_matrix"]
        assert runs[every]["train_logs"] == runs["1"]["train_logs"]
    assert all(isinstance(v, float) for log in runs["1"]["train_logs"] for v in log.values())
    assert set(runs["1"]["train_logs"][0]) == {"loss", "ce", "match"}

    seen = []

    def poison(task, step, method):  # the step after step 2 of task 1, epoch 0, sees NaN weights
        seen.append((task, step))
        if (task, step) == (1, 2):
            with torch.no_grad():
                method.head.weight.fill_(float("nan"))

    monkeypatch.setenv("CL_PEFT_LOSS_CHECK_EVERY", "1000")
    with pytest.raises(NonFiniteLossError, match="task 1, epoch 0, step 3;"):
        _run("linear_probe", real_cil, tmp_path, opts={"epochs": 2}, step_callback=poison)
    assert max(s for t, s in seen if t == 1) > 3  # found at the epoch's end, not at step 3
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["status"] == "failed" and len(res["accuracy_matrix"]) == 1


@pytest.mark.parametrize("value", ["0", "-2", "often"])
def test_bad_loss_check_interval_is_refused_with_what_to_set(real_cil, monkeypatch, value):
    monkeypatch.setenv("CL_PEFT_LOSS_CHECK_EVERY", value)
    with pytest.raises(ValueError, match="CL_PEFT_LOSS_CHECK_EVERY=.*positive integer.*e.g. 50"):
        _run("linear_probe", real_cil, opts={"epochs": 1})


def test_count_ids_is_bincount_without_a_data_dependent_size():
    from cl_peft_lib.methods.selection import count_ids

    idx = torch.randint(0, 7, (33, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(count_ids(idx, 10), torch.bincount(idx.flatten(), minlength=10))
    assert count_ids(idx[:0], 4).tolist() == [0, 0, 0, 0]


def test_corrupt_or_foreign_checkpoint_refused(real_cil, tmp_path):
    _run("linear_probe", real_cil, tmp_path, opts={"epochs": 1})
    with pytest.raises(CheckpointError, match="different run"):
        _run("linear_probe", real_cil, tmp_path, opts={"epochs": 1, "lr": 0.01})
    with pytest.raises(CheckpointError, match="different run"):
        _run("linear_probe", real_cil, tmp_path, opts={"epochs": 1}, seed=1)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable"):
        _run("linear_probe", real_cil, tmp_path, opts={"epochs": 1})


def test_unknown_option_lists_valid(real_cil):
    with pytest.raises(ValueError, match="valid: .*surrogate|valid: .*lr"):
        _run("linear_probe", real_cil, opts={"learning_rate": 1.0})


@pytest.mark.parametrize("args,needle", [
    (["--method", "nope", "--benchmark", "offline-cil"], "finetune, inflora, joint, l2l, l2p, linear_probe, lora"),
    (["--method", "ncm", "--benchmark", "nope"], "valid: offline-cil"),
    (["--method", "ncm", "--benchmark", "offline-cil", "--profile", "nope"], "valid: smoke, offline, laptop, colab, paper"),
    (["--method", "ncm", "--benchmark", "offline-cil", "--backbone", "nope"], "valid:"),
])
def test_cli_bad_names(args, needle, capsys, tmp_path):
    assert cli_main(["run", *args, "--device", "cpu", "--out", str(tmp_path), "--quiet"]) == 2
    assert needle in capsys.readouterr().err


def test_cli_run_prints_matrix(capsys, tmp_path):
    rc = cli_main(["run", "--method", "ncm", "--benchmark", "offline-dil", "--profile", "smoke", "--device", "cpu",
                   "--backbone", BB, "--out", str(tmp_path), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and "accuracy matrix" in out and "mnist-rot90" in out and "forgetting" in out
    assert json.loads((tmp_path / "results.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("method", ["l2p", "l2l", "lora", "linear_probe", "sprompts", "finetune"])
def test_smoke_profile_trains_with_the_offline_learning_rates(method):
    """smoke shrinks batch and data, not the learning rates: lr_batch=128 makes the effective lr of
    batch-scaled methods equal the offline profile's (batch 128); methods without scaling keep theirs."""
    smoke, offline = method_config(method, get_profile("smoke")), method_config(method, get_profile("offline"))
    assert smoke.batch_size == 16 and offline.batch_size == 128
    assert smoke.effective_lr == pytest.approx(offline.effective_lr)
    # an explicit option still wins over the profile
    assert method_config(method, get_profile("smoke"), {"lr_ref_batch": None}).effective_lr == smoke.lr


def test_l2l_default_lr_is_below_l2ps():
    """L2L keeps L2P's recipe (keys and head at L2P's rate); only its LoRA factors get their own, 10x lower rate
    (at L2P's rate the summed LoRA updates diverge, ch. 6)."""
    from cl_peft_lib.methods.families import scale_lr

    l2p, l2l = method_config("l2p", get_profile("offline")), method_config("l2l", get_profile("offline"))
    assert (l2l.pool_size, l2l.top_n, l2l.surrogate_weight, l2l.epochs, l2l.optimizer) == \
        (l2p.pool_size, l2p.top_n, l2p.surrogate_weight, l2p.epochs, l2p.optimizer)
    assert l2l.effective_lr == pytest.approx(l2p.effective_lr)
    assert scale_lr(l2l, l2l.lora_lr) == pytest.approx(l2p.effective_lr / 10)
