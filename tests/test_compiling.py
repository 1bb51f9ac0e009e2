"""Regional torch.compile in the loop (cl_peft_lib.compiling): the switch, the fallback, graph breaks, the record."""
import json

import pytest
import torch

from cl_peft_lib import compiling
from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.loop import RunConfig, Runner, run_continual, train_step
from cl_peft_lib.records import record_path
from cl_peft_lib.step import build_optimizer

BB = "test_vit_micro"
CUDA = torch.device("cuda")


@pytest.mark.parametrize("value", ["fast", "1", "yes"])
def test_bad_mode_is_refused_before_any_data_loads(monkeypatch, value):
    import cl_peft_lib.loop as loop

    monkeypatch.setenv(compiling.COMPILE_ENV, value)
    monkeypatch.setattr(loop, "build_benchmark", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ValueError, match=r"CL_PEFT_COMPILE=.* is not a mode; use on, off or auto"):
        Runner(RunConfig("l2p", "offline-cil", "smoke", device="cpu"))


@pytest.mark.parametrize("pays", [(), ("paper",)])
def test_auto_compiles_only_on_cuda_under_the_profiles_where_it_pays(monkeypatch, pays):
    monkeypatch.setattr(compiling, "unavailable_reason", lambda device: None)
    monkeypatch.setattr(compiling, "PAYS_PROFILES", pays)
    for profile in ("smoke", "offline", "laptop", "colab", "paper"):
        on, why = compiling.wanted(profile, CUDA, "auto")
        assert on == (profile in pays), (profile, why)
        assert why == ("compiled blocks (CL_PEFT_COMPILE=auto)" if on else
                       "eager (CL_PEFT_COMPILE unset: " + ("compiled on CUDA under the paper profiles)" if pays else
                                                          "compiled under no profile, where it did not pay; "
                                                          "CL_PEFT_COMPILE=on compiles)"))
        assert not compiling.wanted(profile, torch.device("cpu"), "auto")[0]
    assert compiling.wanted("offline", torch.device("cpu"), "on") == (True, "compiled blocks (CL_PEFT_COMPILE=on)")
    assert compiling.wanted("paper", CUDA, "off") == (False, "eager (CL_PEFT_COMPILE=off)")
    monkeypatch.delenv(compiling.COMPILE_ENV, raising=False)
    assert compiling.compile_mode() == "auto"


def test_a_gpu_that_cannot_compile_runs_eagerly_and_says_why(monkeypatch):
    import importlib.util

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert compiling.wanted("paper", CUDA, "on") == (
        False, "eager: the GPU has compute capability 6.1; Triton needs 7.0 or newer")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else real(name, *a))
    assert compiling.wanted("paper", CUDA, "on") == (False, "eager: Triton is not installed (pip install triton)")


def _runner(method, scenario, opts=None):
    cfg = RunConfig(method, scenario.name, "smoke", device="cpu", backbone=BB, progress=False, method_options=opts or {})
    return Runner(cfg, scenario=scenario, backbone=create_backbone(BB))


@pytest.mark.parametrize("method,kind", [("finetune", "class"), ("lora", "class"), ("l2p", "class"),
                                         ("l2l", "class"), ("inflora", "class"),
                                         ("sdlora", "class"), ("sprompts", "domain"), ("slora", "domain")])
def test_compiled_blocks_trace_without_graph_breaks_and_train_alike(method, kind, toy_scenario):
    """Every method whose forward calls the ViT's blocks is traced by Dynamo in one graph per block call
    (a graph break would cut the compiled region) and trains to the same weights ('eager' backend: the
    traced graph run by PyTorch itself, so any difference would be the tracing's)."""
    scenario = toy_scenario(kind, num_tasks=2)
    task = scenario.tasks[0]
    runs = []
    for compiled in (False, True):
        r = _runner(method, scenario)
        m = r.method
        m.begin_task(0, task.classes)
        if compiled:
            assert compiling.compile_blocks(m, backend="eager") > 0
        groups = [g for g in m.param_groups() if g["params"]]
        opt, sched = build_optimizer(r.mcfg, groups, 2)
        params = [p for g in groups for p in g["params"]]
        scaler = torch.amp.GradScaler(enabled=False)
        m.train()
        x, y = next(r.model_batches(task.train, 8))
        for _ in range(2):
            logs = train_step(m, x, y, opt, scaler, params, r.mcfg, r.device, sched, "", check=True)
        m.eval()
        m.end_task(0, r.context(task))
        with torch.no_grad():
            logits = m.predict(x, task_id=0)
        runs.append((float(logs["loss"]), [p.detach().clone() for p in params], logits))
        if compiled:
            stats = compiling.dynamo_stats()
            assert stats["graph_breaks"] == 0, stats
            assert stats["unique_graphs"] >= 1, stats
    (l0, p0, y0), (l1, p1, y1) = runs
    assert l1 == pytest.approx(l0, rel=1e-5, abs=1e-6)
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y0, y1, rtol=1e-5, atol=1e-5)


def test_the_loop_compiles_when_asked_and_records_it(monkeypatch, toy_scenario):
    """CL_PEFT_COMPILE=on: the Runner compiles the method's blocks, the run's provenance says so, and the
    accuracy matrix is the eager run's; unset on a CPU it stays eager and says why."""
    calls = []
    real = compiling.compile_blocks

    def traced(model, **kw):
        calls.append(type(model).__name__)
        return real(model, backend="eager")

    monkeypatch.setattr(compiling, "compile_blocks", traced)
    scenario = toy_scenario("class", num_tasks=2)
    res = {}
    for mode in ("auto", "on"):
        monkeypatch.setenv(compiling.COMPILE_ENV, mode)
        cfg = RunConfig("l2p", scenario.name, "smoke", device="cpu", backbone=BB, progress=False,
                        method_options={"epochs": 1, "pool_size": 4, "top_n": 2, "prompt_length": 2})
        res[mode] = run_continual(cfg, scenario=scenario, backbone=create_backbone(BB))
    assert calls == ["L2P"]
    assert res["auto"]["provenance"]["compile"].startswith("eager (CL_PEFT_COMPILE unset")
    assert res["on"]["provenance"]["compile"] == "compiled blocks (CL_PEFT_COMPILE=on)"
    for a, b in zip(res["auto"]["accuracy_matrix"], res["on"]["accuracy_matrix"]):
        assert a == pytest.approx(b, abs=1e-9)


def test_pays_profiles_agree_with_the_measured_record():
    """PAYS_PROFILES is what scripts/compile_check.py measured on the H200 (cl_peft_lib/records/compile_check.json):
    a profile is in it exactly when its compiled runs, compilation included, took less wall time than the eager
    ones, summed over the record's methods; every compiled run of the record finished and matched its eager twin."""
    rec = json.loads(record_path("compile_check.json").read_text())
    verdicts = compiling.measured_verdicts(rec)
    assert set(verdicts) >= {"colab", "paper"}
    for profile, v in verdicts.items():
        assert (profile in compiling.PAYS_PROFILES) == v["pays"], (profile, v)
    for rows in rec["profiles"].values():
        for row in rows:
            assert "error" not in row["on"] and "error" not in row["off"], row
            assert row["on"]["compile"].startswith("compiled blocks"), row
            assert row["on"]["dynamo"]["graph_breaks"] == 0, row
