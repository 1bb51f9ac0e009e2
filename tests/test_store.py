"""The run store: collision-free keys, one layout for every caller, evaluation outside a run's
identity, and what a re-run does with what it finds on disk."""
import json
from pathlib import Path

import pytest
import torch

from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.evaluation import EvalConfig
from cl_peft_lib.loop import CheckpointError, RunConfig, Runner, evaluate_run, run_continual
from cl_peft_lib.store import eval_path, run_dir, run_key

BB = "test_vit_micro"


@pytest.mark.parametrize("a,b", [
    ({"layers": (1, 10)}, {"layers": (11, 0)}),      # punctuation once made these one folder
    ({"lr": 1}, {"lr": 1.0}),
    ({"lr": "1"}, {"lr": 1}),
    ({"layers": (0, 1)}, {"layers": [0, 1]}),
    ({"batchwise": True}, {"batchwise": 1}),
    ({"target_modules": ("qkv", "fc1")}, {"target_modules": ("qkv,fc1",)}),
    ({"a": 1}, {"a": 1, "b": None}),
    ({}, {"rank": 4}),
])
def test_different_options_never_share_a_folder(a, b):
    assert run_key("l2l", a) != run_key("l2l", b)
    assert run_dir("offline", "offline-cil", "l2l", 0, a) != run_dir("offline", "offline-cil", "l2l", 0, b)


def test_the_same_settings_always_meet_the_same_folder():
    a = run_dir("offline", "offline-cil", "l2l", 3, {"rank": 2, "layers": (0,)}, root="r")
    b = run_dir("offline", "offline-cil", "l2l", 3, {"layers": (0,), "rank": 2}, root="r")
    assert a == b and a.name == "seed3" and a.parts[:3] == ("r", "offline", "offline-cil")
    assert a.parent.name.startswith("l2l-layers0-rank2-")  # readable prefix + hash
    assert run_dir("offline", "offline-cil", "l2p", 0, None, root="r") == Path("r/offline/offline-cil/l2p/seed0")
    assert run_key("l2p", {}, backbone="random_vit_tiny_p4_28") != run_key("l2p")


def test_the_grid_uses_the_store(tmp_path):
    from cl_peft_lib.grid import plan

    runs = plan(["l2p", "l2l"], ["offline-cil"], [0, 1], "smoke", {"lr": 0.01}, None, tmp_path)
    assert [Path(r.out) for r in runs] == [
        run_dir("smoke", "offline-cil", m, s, {"lr": 0.01}, None, tmp_path).resolve() for m in ("l2p", "l2l")
        for s in (0, 1)]


def _cfg(out, method="sprompts", **opts):
    return RunConfig(method, "toy-dil", "smoke", device="cpu", out_dir=str(out), backbone=BB, progress=False,
                     method_options={"epochs": 1, **opts})


def test_a_finished_run_is_evaluated_under_other_settings_without_retraining(toy_scenario, tmp_path, monkeypatch):
    sc = toy_scenario("domain", num_tasks=2, classes=4, per_class=8)
    res = run_continual(_cfg(tmp_path), scenario=sc, backbone=create_backbone(BB))
    assert res["store_key"] == run_key("sprompts", {"epochs": 1}, BB)

    def no_training(*a, **k):
        raise AssertionError("evaluation must not train")

    monkeypatch.setattr(Runner, "train_task", no_training)
    monkeypatch.setattr("cl_peft_lib.methods.selection.KMeansTaskIdentifier.identify",
                        lambda self, f: torch.zeros(len(f), dtype=torch.long))  # k-means would always say domain 0
    default = evaluate_run(_cfg(tmp_path), {}, scenario=sc, backbone=create_backbone(BB))
    assert default["task_id_accuracy"] == [100.0, 0.0]
    oracle = evaluate_run(_cfg(tmp_path), {"oracle_task_id": True}, scenario=sc, backbone=create_backbone(BB))
    assert oracle["task_id_accuracy"] == [100.0, 100.0] and oracle["after_task"] == 1
    stored = eval_path(tmp_path, {"oracle_task_id": True})
    assert json.loads(stored.read_text())["accuracy"] == oracle["accuracy"]
    assert eval_path(tmp_path, {}) != stored
    # the run's own results are untouched, and its identity does not contain evaluation settings
    assert json.loads((tmp_path / "results.json").read_text())["accuracy_matrix"] == res["accuracy_matrix"]
    with pytest.raises(ValueError, match="evaluation setting"):
        _ = run_continual(_cfg(tmp_path / "x", oracle_task_id=True), scenario=sc, backbone=create_backbone(BB))
    with pytest.raises(ValueError, match="unknown evaluation setting"):
        EvalConfig.from_dict({"oracle": True})


def test_masking_unseen_classes_is_an_evaluation_setting(toy_scenario, tmp_path):
    sc = toy_scenario("class", num_tasks=2, classes=4)
    cfg = _cfg(tmp_path, method="linear_probe")
    cfg.benchmark = sc.name
    run_continual(cfg, scenario=sc, backbone=create_backbone(BB))
    r = Runner(cfg, sc, create_backbone(BB))
    r.load_checkpoint()
    x = next(r.model_batches(sc.tasks[0].test))[0]
    r.method.eval()
    r.method.seen[2:] = False  # pretend only task 0 was seen
    plain = r.method.predict(x)
    r.method.set_eval(EvalConfig(mask_unseen=True))
    masked = r.method.predict(x)
    assert torch.isfinite(plain).all(), "the reference scores all logits"
    assert torch.isinf(masked[:, 2:]).all() and torch.equal(masked[:, :2], plain[:, :2])


def test_rerun_says_what_it_does_and_never_overwrites_a_complete_result(toy_scenario, tmp_path, capsys):
    sc = toy_scenario("domain", num_tasks=2, classes=4, per_class=8)
    first = run_continual(_cfg(tmp_path), scenario=sc, backbone=create_backbone(BB))
    res_file = tmp_path / "results.json"
    stamp = res_file.stat().st_mtime_ns
    again = run_continual(_cfg(tmp_path), scenario=sc, backbone=create_backbone(BB))
    assert again["accuracy_matrix"] == first["accuracy_matrix"] and res_file.stat().st_mtime_ns == stamp
    assert "finished: nothing to do" in capsys.readouterr().err
    (tmp_path / "checkpoint.pt").unlink()  # the result stays the answer; nothing retrains from zero
    again = run_continual(_cfg(tmp_path), scenario=sc, backbone=create_backbone(BB))
    assert again == first and res_file.stat().st_mtime_ns == stamp
    assert "checkpoint is gone" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="different run"):  # another run's complete result, no checkpoint
        run_continual(_cfg(tmp_path, lr=0.5), scenario=sc, backbone=create_backbone(BB))
    fresh = run_continual(RunConfig(**{**vars(_cfg(tmp_path)), "resume": False}), scenario=sc,
                          backbone=create_backbone(BB))
    assert fresh["status"] == "complete" and res_file.stat().st_mtime_ns != stamp


@pytest.mark.parametrize("method,opts", [("l2p", {}), ("l2l", {}), ("lora", {"lr": 0.003})])
def test_killing_and_resuming_a_peft_method_mid_task_gives_the_identical_matrix(method, opts, toy_scenario, tmp_path,
                                                                               capsys):
    sc = toy_scenario("class", num_tasks=3, classes=6, per_class=8)

    def cfg(out):
        return RunConfig(method, sc.name, "smoke", device="cpu", out_dir=str(out), backbone=BB, progress=False,
                         method_options={"epochs": 2, **opts})

    full = run_continual(cfg(tmp_path / "full"), scenario=sc, backbone=create_backbone(BB))

    class Killed(Exception):
        pass

    calls = []

    def kill(task, step, m):  # the second optimizer step of task 1 (mid-task: one step per epoch here)
        calls.append(task)
        if calls.count(1) == 2:
            raise Killed

    with pytest.raises(Killed):
        run_continual(cfg(tmp_path / "k"), scenario=sc, backbone=create_backbone(BB), step_callback=kill)
    resumed = run_continual(cfg(tmp_path / "k"), scenario=sc, backbone=create_backbone(BB))
    assert "resuming after task 0 of 3" in capsys.readouterr().err
    assert resumed["resumed_from_task"] == 0
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]


def test_naming_the_profiles_own_backbone_is_the_default_run():
    from cl_peft_lib.profiles import PROFILES

    own = PROFILES["offline"].backbone
    assert run_dir("offline", "b", "ncm", 0, backbone=own) == run_dir("offline", "b", "ncm", 0)
    assert run_dir("offline", "b", "ncm", 0, backbone="random_vit_tiny_p4_28") != run_dir("offline", "b", "ncm", 0)


def test_cli_evaluate_scores_a_finished_run_from_the_store(tmp_path, capsys):
    from cl_peft_lib.cli import main as cli_main

    base = ["--method", "ncm", "--benchmark", "offline-dil", "--profile", "smoke", "--device", "cpu",
            "--backbone", BB, "--root", str(tmp_path)]
    assert cli_main(["evaluate", *base]) == 2  # nothing there yet: a one-line error, no training
    assert "run it first" in capsys.readouterr().err
    assert cli_main(["run", *base, "--quiet"]) == 0
    folder = run_dir("smoke", "offline-dil", "ncm", 0, None, BB, tmp_path)
    res = json.loads((folder / "results.json").read_text())
    assert res["store_key"] == folder.parent.name and res["validation"]["average_accuracy"] > 10
    assert cli_main(["evaluate", *base, "--eval", "split=val"]) == 0
    val = json.loads(eval_path(folder, {"split": "val"}).read_text())
    assert val["average_accuracy"] == pytest.approx(res["validation"]["average_accuracy"])
    assert cli_main(["evaluate", *base, "--eval", "nope=1"]) == 2
    assert "unknown evaluation setting" in capsys.readouterr().err
