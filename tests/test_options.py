"""Typed options, validated method configs, the optimizer builder, and bad input the CLI refuses before any data loads."""
import ast
import math
from pathlib import Path

import pytest
import torch

import cl_peft_lib.data.scenarios as scenarios
import cl_peft_lib.loop as loop
from cl_peft_lib.cli import main as cli_main
from cl_peft_lib.loop import RunConfig, Runner, build_optimizer, method_config
from cl_peft_lib.methods import METHODS, MethodConfig, get_method_class, register_method
from cl_peft_lib.options import check_out_dir, format_opt, format_opts, parse_opt, parse_opts, parse_value
from cl_peft_lib.profiles import get_profile
from cl_peft_lib.utils import resolve_device

BB = "test_vit_micro"
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the parser
@pytest.mark.parametrize("text,value", [
    ("3", 3), ("-2", -2), ("1e-3", 1e-3), ("0.5", 0.5), ("true", True), ("False", False), ("none", None),
    ("null", None), ("(0,1)", (0, 1)), ("0,1", (0, 1)), ("[0, 1]", [0, 1]), ("(3,)", (3,)), ("adam", "adam"),
    ("qkv,fc1", ("qkv", "fc1")), ("'a b'", "a b"), ("'none'", "none"), ("'3'", "3"), (" sgd ", "sgd"),
    ("(0.0, 1.0)", (0.0, 1.0)), ("{1: 2}", "{1: 2}"),
])
def test_parse_value_keeps_types(text, value):
    got = parse_value(text)
    assert got == value and type(got) is type(value)
    if isinstance(value, (tuple, list)):
        assert [type(x) for x in got] == [type(x) for x in value]


def test_parse_value_non_finite_floats():
    assert parse_value("inf") == math.inf and parse_value("-inf") == -math.inf and math.isnan(parse_value("nan"))


@pytest.mark.parametrize("value", [3, -1, 0.001, 2.5e-7, True, False, None, (0, 1), (3,), (), [1, 2], "qkv", "none",
                                   "true", "a b", "1", ("qkv", "fc1"), (-1.0, 1.0), math.inf])
def test_format_opt_round_trips(value):
    k, v = parse_opt(format_opt("key", value))
    assert k == "key" and v == value and type(v) is type(value)


def test_parse_opts_list_and_dict_agree():
    strings = ["lr=0.01", "top_n=3", "layers=(0,1)", "batchwise=false", "alpha=none", "lr=0.02"]
    d = parse_opts(strings)
    assert d == {"lr": 0.02, "top_n": 3, "layers": (0, 1), "batchwise": False, "alpha": None}  # the last lr wins
    assert parse_opts(d) == d and parse_opts(d) is not d
    assert parse_opts(format_opts(d)) == d and parse_opts(None) == {} and parse_opts([]) == {}


@pytest.mark.parametrize("bad,needle", [
    ("lr", "KEY=VALUE"), ("=3", "not a name"), ("learning rate=1", "not a name"), (3, "KEY=VALUE"),
])
def test_parse_opt_refuses_malformed(bad, needle):
    with pytest.raises(ValueError, match=needle):
        parse_opt(bad)


def test_parse_opts_refuses_a_bare_string_and_bad_keys():
    with pytest.raises(ValueError, match=r"write \['lr=0.1'\]"):
        parse_opts("lr=0.1")
    with pytest.raises(ValueError, match="names"):
        parse_opts({"a-b": 1})


def test_no_import_cycle_grid_does_not_import_cli():
    for mod in ("grid.py", "options.py", "methods/registry.py"):
        tree = ast.parse((ROOT / "cl_peft_lib" / mod).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "cli" not in imported and not any(m and m.endswith(".cli") for m in imported), mod
    tree = ast.parse((ROOT / "cl_peft_lib" / "options.py").read_text())  # a leaf: nothing of the library
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]


# ----------------------------------------------------------------------------- the registry
def test_registry_names_and_refusals():
    assert list(METHODS)[:4] == ["finetune", "linear_probe", "joint", "ncm"]
    assert {"l2p", "dualprompt", "sprompts", "l2l", "slora", "lora"} <= set(METHODS)
    assert get_method_class("l2p") is METHODS["l2p"]
    with pytest.raises(KeyError, match="valid: .*dualprompt.*ncm"):
        get_method_class("l2q")
    with pytest.raises(TypeError, match="ContinualMethod"):
        register_method(int)

    class Impostor(METHODS["ncm"]):  # another class under an existing name
        name = "l2p"

    with pytest.raises(ValueError, match="already registered"):
        register_method(Impostor)
    assert register_method(METHODS["l2p"]) is METHODS["l2p"]  # re-registering the same class is harmless


# ----------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("method,opts,needle", [
    ("l2p", {"lr": "abc"}, r"lr must be a float, got 'abc' \(str\)"),
    ("l2p", {"lr": 0}, "lr must be > 0"),
    ("l2p", {"lr": -1e-3}, "lr must be > 0"),
    ("l2p", {"lr": math.nan}, "lr must be finite"),
    ("l2p", {"lr": math.inf}, "lr must be finite"),
    ("l2p", {"batch_size": 0}, "batch_size must be >= 1"),
    ("l2p", {"batch_size": 16.0}, r"batch_size must be an int, got 16.0 \(float\)"),
    ("l2p", {"epochs": -1}, "epochs must be >= 0"),
    ("l2p", {"epochs": True}, r"epochs must be an int, got True \(bool\)"),
    ("l2p", {"optimizer": "rmsprop"}, "optimizer must be one of 'adam', 'adamw', 'sgd'"),
    ("sprompts", {"schedule": "linear"}, "schedule must be one of 'constant', 'cosine'"),
    ("l2p", {"weight_decay": -0.1}, "weight_decay must be >= 0"),
    ("sprompts", {"momentum": 1.0}, "momentum must be >= 0 and < 1"),
    ("l2p", {"grad_clip": 0}, "grad_clip must be > 0"),
    ("l2p", {"grad_clip": "none"}, "grad_clip must be None or a float"),
    ("l2p", {"lr_ref_batch": 0}, "lr_ref_batch must be > 0"),
    ("l2p", {"train_mask": "yes"}, "train_mask must be a bool"),
    ("l2p", {"top_n": 11}, r"top_n must be >= 1 and <= 10 \(pool_size\)"),
    ("l2p", {"pool_size": 2, "top_n": 3}, "top_n must be >= 1 and <= 2"),
    ("l2p", {"pool_size": 0}, "pool_size must be >= 1"),
    ("l2p", {"prompt_length": 0}, "prompt_length must be >= 1"),
    ("l2p", {"prompt_init": (1.0, 0.0)}, "low < high"),
    ("l2p", {"prompt_init": (0.0,)}, "prompt_init must be a tuple of 2 floats"),
    ("dualprompt", {"g_layers": (0, -1)}, "block indices >= 0"),
    ("dualprompt", {"e_layers": "2,3"}, "e_layers must be a tuple of ints"),
    ("sprompts", {"kmeans_k": 0}, "kmeans_k must be >= 1"),
    ("l2l", {"rank": 0}, "rank must be >= 1"),
    ("lora", {"alpha": 0.0}, "alpha must be > 0"),
    ("slora", {"layers": ()}, "layers must be None"),
    ("slora", {"target_modules": "qkv,nope"}, "unknown LoRA target"),
    ("slora", {"shared_head": 1}, "shared_head must be a bool"),
    ("slora", {"merged_inference": True}, "an evaluation setting"),
    ("l2p", {"learning_rate": 1.0}, r"unknown option\(s\) \['learning_rate'\] .*valid: .*'lr'"),
])
def test_config_refuses_bad_values(method, opts, needle):
    with pytest.raises(ValueError, match=needle):
        method_config(method, get_profile("smoke"), opts)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_epochs_zero_refused_for_every_training_method(name):
    cls = get_method_class(name).config_cls
    assert cls().epochs >= 0  # the defaults themselves are valid
    if cls().epochs > 0:
        with pytest.raises(ValueError, match="would not train"):
            cls(epochs=0)
    else:  # ncm: a training-free method keeps epochs=0
        assert cls(epochs=0).epochs == 0


def test_config_coercions():
    c = method_config("dualprompt", get_profile("smoke"), {"lr": 1, "g_layers": [0], "e_layers": [1],
                                                          "prompt_init": [-1, 1]})
    assert c.lr == 1 and c.g_layers == (0,) and c.e_layers == (1,) and c.prompt_init == (-1, 1)
    lc = METHODS["l2l"].config_cls(layers=3, target_modules="qkv, fc2", alpha=2)
    assert lc.layers == (3,) and lc.target_modules == ("qkv", "fc2") and lc.alpha == 2
    assert METHODS["l2l"].config_cls(layers=[0, 1]).layers == (0, 1)
    # the CLI's strings give the same config as a dict
    strings = method_config("l2l", get_profile("smoke"), ["layers=0,1", "target_modules=qkv,fc1", "lr=3e-3"])
    assert strings == method_config("l2l", get_profile("smoke"), {"layers": (0, 1), "target_modules": ("qkv", "fc1"),
                                                                  "lr": 0.003})


def test_subclass_fields_are_validated_by_the_generic_checker():
    from dataclasses import dataclass

    @dataclass
    class Toy(MethodConfig):
        width: int = 2
        names: tuple[str, ...] = ("a",)
        scale: float | None = None

    assert Toy(names=["x", "y"]).names == ("x", "y") and Toy(scale=3).scale == 3
    with pytest.raises(ValueError, match=r"width must be an int, got '2' \(str\)"):
        Toy(width="2")
    with pytest.raises(ValueError, match=r"names\b.* must be a tuple of strings|names must be a tuple of strings"):
        Toy(names=(1, 2))
    with pytest.raises(ValueError, match="scale must be None or a float"):
        Toy(scale="big")


# ----------------------------------------------------------------------------- the optimizer
def test_sgd_cosine_follows_the_formula_and_ends_at_zero():
    cfg = method_config("sprompts", get_profile("offline"), {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.01})
    assert (cfg.optimizer, cfg.schedule) == ("sgd", "cosine")
    p = torch.nn.Parameter(torch.ones(3))
    S = 7
    opt, sched = build_optimizer(cfg, [{"params": [p]}], S)
    assert isinstance(opt, torch.optim.SGD)
    g = opt.param_groups[0]
    assert (g["momentum"], g["weight_decay"]) == (0.5, 0.01)
    lrs = [g["lr"]]
    for _ in range(S):
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
        lrs.append(g["lr"])
    want = [cfg.effective_lr * 0.5 * (1 + math.cos(math.pi * s / S)) for s in range(S + 1)]
    assert lrs == pytest.approx(want, abs=1e-12)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.0, abs=1e-12)
    opt2, _ = build_optimizer(cfg, [{"params": [p]}], S)  # a new optimizer starts over
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1) and not opt2.state


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_constant_schedule_optimizers(name, cls):
    cfg = method_config("linear_probe", get_profile("offline"), {"optimizer": name, "lr_ref_batch": None})
    opt, sched = build_optimizer(cfg, [{"params": [torch.nn.Parameter(torch.ones(1))]}], 5)
    assert type(opt) is cls and sched is None and opt.param_groups[0]["lr"] == cfg.lr


def test_cosine_restarts_with_every_task(toy_scenario):
    """Runner.train_task builds a new optimizer per task: each task's lr runs the whole cosine from lr to 0."""
    from cl_peft_lib.backbones import create_backbone

    s = toy_scenario("class", num_tasks=2, per_class=8)
    opts = {"optimizer": "sgd", "schedule": "cosine", "lr": 0.05, "lr_ref_batch": None, "epochs": 2, "batch_size": 4}
    r = Runner(RunConfig("linear_probe", s.name, "smoke", device="cpu", method_options=opts, backbone=BB,
                         progress=False), scenario=s, backbone=create_backbone(BB))
    built, lrs = [], {0: [], 1: []}
    real = loop.build_optimizer

    def spy(cfg, groups, total):
        opt, sched = real(cfg, groups, total)
        built.append((opt, total))
        return opt, sched

    def record(t, step, m):
        lrs[t].append(built[-1][0].param_groups[0]["lr"])

    try:
        loop.build_optimizer = spy
        for t in range(2):
            r.method.begin_task(t, s.tasks[t].classes)
            r.train_task(t, record)
    finally:
        loop.build_optimizer = real
    assert len(built) == 2 and built[0][0] is not built[1][0]
    for t in range(2):
        S = built[t][1]
        assert S == 2 * math.ceil(len(s.tasks[t].train) / 4) == len(lrs[t])
        assert lrs[t] == pytest.approx([0.05 * 0.5 * (1 + math.cos(math.pi * k / S)) for k in range(1, S + 1)])
        assert lrs[t][-1] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- bad input on the CLI
@pytest.fixture
def no_data(monkeypatch):
    """Any data set, backbone or child process the command would touch fails the test."""
    def boom(*a, **k):
        pytest.fail("data (or a backbone, or a run) was loaded before the bad input was refused")

    for name in list(scenarios.BENCHMARKS):
        monkeypatch.setitem(scenarios.BENCHMARKS, name, boom)
    monkeypatch.setattr(scenarios, "build_benchmark", boom)
    monkeypatch.setattr(loop, "build_benchmark", boom)
    monkeypatch.setattr(loop, "create_backbone", boom)
    monkeypatch.setattr("cl_peft_lib.grid.subprocess.Popen", boom)
    monkeypatch.delenv("CL_PEFT_DEVICE", raising=False)
    monkeypatch.delenv("CL_PEFT_PROFILE", raising=False)


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _refused(capsys, argv, needle):
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert needle in err, err
    return err


RUN = ["run", "--method", "l2p", "--benchmark", "offline-cil", "--profile", "smoke", "--backbone", BB, "--quiet"]


@pytest.mark.parametrize("extra,needle", [
    (["--opt", "lr=abc"], "lr must be a float, got 'abc' (str)"),
    (["--opt", "batch_size=0"], "batch_size must be >= 1, got 0"),
    (["--opt", "epochs=0"], "would not train"),
    (["--opt", "learning_rate=0.1"], "unknown option(s) ['learning_rate']"),
    (["--opt", "lr"], "KEY=VALUE"),
    (["--opt", "optimizer=rmsprop"], "optimizer must be one of"),
    (["--opt", "top_n=20"], "top_n must be"),
    (["--backbone", "nope"], "unknown backbone 'nope'; valid:"),
    (["--device", "gpu"], "device 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--device", "cuda:3"], "CUDA is not available"),
    (["--profile", "nope"], "valid: smoke, offline, laptop, colab, paper"),
])
def test_cli_run_refuses_before_loading_data(extra, needle, no_data, no_cuda, capsys, tmp_path):
    _refused(capsys, RUN + ["--device", "cpu", "--out", str(tmp_path / "o")] + extra, needle)
    assert not (tmp_path / "o").exists()  # nothing was written either


def test_cli_unknown_benchmark_before_data(no_data, capsys, tmp_path):
    argv = ["run", "--method", "ncm", "--benchmark", "nope", "--device", "cpu", "--out", str(tmp_path)]
    _refused(capsys, argv, "valid: offline-cil")


def test_cli_out_must_be_a_folder(no_data, capsys, tmp_path):
    f = tmp_path / "results.txt"
    f.write_text("x")
    _refused(capsys, RUN + ["--device", "cpu", "--out", str(f)], f"--out {f} is a file")
    _refused(capsys, RUN + ["--device", "cpu", "--out", str(f / "run")], f"lies under {f}, which is a file")
    _refused(capsys, ["grid", "--methods", "ncm", "--benchmarks", "offline-dil", "--workers", "1", "--root", str(f)],
             "is a file")


def test_check_out_dir_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b"
    assert check_out_dir(target) == target and not (tmp_path / "a").exists()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        import os

        if not os.access(ro, os.W_OK):  # root may write anyway
            with pytest.raises(ValueError, match="not writable"):
                check_out_dir(ro / "x")
    finally:
        ro.chmod(0o700)


def test_cl_peft_device_is_honoured_and_checked(no_data, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("CL_PEFT_DEVICE", "gpu")
    _refused(capsys, RUN + ["--out", str(tmp_path)], "CL_PEFT_DEVICE='gpu' is not a device")
    monkeypatch.setenv("CL_PEFT_DEVICE", "cpu")
    assert resolve_device(None) == torch.device("cpu")
    seen = {}

    def fake_run(cfg):  # the CLI passes the device on unresolved, and an explicit --device wins
        seen[cfg.device] = resolve_device(cfg.device)
        raise KeyError("stopped here")

    monkeypatch.setattr(loop, "run_continual", fake_run)
    _refused(capsys, RUN + ["--out", str(tmp_path)], "stopped here")
    monkeypatch.setenv("CL_PEFT_DEVICE", "gpu")
    _refused(capsys, RUN + ["--device", "cpu", "--out", str(tmp_path)], "stopped here")
    assert seen == {None: torch.device("cpu"), "cpu": torch.device("cpu")}


@pytest.mark.parametrize("extra,needle", [
    (["--gpus", "0"], "--gpus 0: no CUDA GPU is visible"),
    (["--workers", "0"], "--workers must be >= 1"),
    (["--opt", "lr=abc"], "lr must be a float, got 'abc' (str)"),
    (["--opt", "epochs=0"], "would not train"),
    (["--opt", "top_n=2"], "unknown option(s) ['top_n'] for NCMConfig"),  # valid for l2p, not for ncm
    (["--opt", "lr"], "KEY=VALUE"),
    (["--backbone", "nope"], "unknown backbone"),
])
def test_cli_grid_refuses_before_any_run(extra, needle, no_data, no_cuda, capsys, tmp_path):
    argv = ["grid", "--methods", "l2p,ncm", "--benchmarks", "offline-cil", "--profile", "smoke",
            "--root", str(tmp_path / "g")] + extra
    _refused(capsys, argv, needle)
    assert not (tmp_path / "g").exists()


def test_run_grid_accepts_a_dict_of_options(monkeypatch, tmp_path):
    """Notebooks pass dicts; children get the same typed values back through --opt strings."""
    import cl_peft_lib.grid as grid

    cmds = []

    class FakeProc:
        def __init__(self, cmd, **kw):
            cmds.append(cmd)

        def wait(self):
            return 3

    monkeypatch.setenv("CL_PEFT_GRID_PROCESS", "fresh")
    monkeypatch.setattr(grid.subprocess, "Popen", FakeProc)
    opts = {"layers": (0, 1), "target_modules": ("qkv", "fc1"), "lr": 0.003, "alpha": None}
    g = grid.run_grid(["l2l"], ["offline-cil"], [0], "smoke", tmp_path, workers=1, backbone=BB, opts=opts, log=None)
    [cmd] = cmds
    passed = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--opt"]
    assert parse_opts(passed) == opts and g["config"]["opts"] == passed
    assert g["counts"]["failed"] == 1  # the fake child wrote no results
    assert grid.run_grid(["l2l"], ["offline-cil"], [0], "smoke", tmp_path, workers=1, backbone=BB,
                         opts=passed, log=None)["config"]["opts"] == passed
