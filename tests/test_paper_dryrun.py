"""Paper-track dry run: ``cl-peft run --profile paper`` end to end on fabricated official-format files.

Every benchmark's files are written by the fabricators of ``tests/test_paper_loaders.py`` (the
official on-disk formats), with few images per class; the runs use the random ``test_vit_micro``
backbone on the CPU and one epoch. Each run must finish with a full accuracy matrix.
"""
from __future__ import annotations

import json

import pytest
from test_paper_loaders import _make_cifar, _make_core50, _make_domainnet, _make_imagenet_r, _make_tiny

from cl_peft_lib.cli import main
from cl_peft_lib.data.paper import DOMAINNET_DOMAINS

#: (benchmark, fabricate(root), tasks, methods): class-incremental methods on the CIL benchmarks,
#: the domain-routing ones (S-Prompts, S-LoRA) on the domain-incremental ones.
CASES = [
    ("split-cifar100", lambda r: _make_cifar(r, [c for c in range(100) for _ in range(3)], list(range(100))), 10,
     ["l2p", "finetune", "lora", "coda"]),
    ("split-tinyimagenet", lambda r: _make_tiny(r, [f"n{k:08d}" for k in range(200)],
                                                [(f"val_{k}.JPEG", k) for k in range(200)], size=8), 10,
     ["dualprompt", "linear_probe", "ranpac"]),
    ("imagenet-r", lambda r: _make_imagenet_r(r, per_class=3), 10, ["l2l", "joint", "inflora"]),
    ("core50", _make_core50, 8, ["sprompts", "ncm", "sdlora"]),
    ("domainnet", lambda r: _make_domainnet(r, DOMAINNET_DOMAINS), 6, ["slora", "joint"]),
]


#: Options a method needs on the 2-block test backbone (its reference layers do not exist there).
EXTRA = {"dualprompt": ["g_layers=[0]", "e_layers=[1]"], "coda": ["layers=[0,1]"],
         "ranpac": ["proj_dim=64"]}  # (RanPAC's reference M=10000 is a GPU setting)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No downloads; data decoded in the test process (2 CPU cores: worker processes cost more than they save)."""
    from dataclasses import replace

    from cl_peft_lib.profiles import PROFILES

    monkeypatch.delenv("CL_PEFT_DOWNLOAD", raising=False)
    monkeypatch.setitem(PROFILES, "paper", replace(PROFILES["paper"], num_workers=0))


@pytest.mark.parametrize("bench, fabricate, tasks, methods", CASES, ids=[c[0] for c in CASES])
def test_paper_profile_runs_end_to_end(bench, fabricate, tasks, methods, tmp_path, monkeypatch, capsys):
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    fabricate(data)
    monkeypatch.setenv("CL_PEFT_DATA", str(data))
    for method in methods:
        rc = main(["run", "--method", method, "--benchmark", bench, "--profile", "paper", "--backbone",
                   "test_vit_micro", "--device", "cpu", "--root", str(runs), "--opt", "epochs=1", "--quiet",
                   *[a for o in EXTRA.get(method, []) for a in ("--opt", o)]])
        assert rc == 0, capsys.readouterr().err
    files = sorted(runs.glob(f"paper/{bench}/*/seed0/results.json"))
    assert len(files) == len(methods)
    for f in files:
        res = json.loads(f.read_text())
        R = res["accuracy_matrix"]
        assert res["status"] == "complete" and [len(r) for r in R] == list(range(1, tasks + 1)), (f, R)
        assert all(0 <= a <= 100 for row in R for a in row)


def test_every_method_and_paper_benchmark_is_covered():
    from cl_peft_lib.data.scenarios import BENCHMARKS
    from cl_peft_lib.methods import METHODS

    assert {m for c in CASES for m in c[3]} == set(METHODS)
    assert {c[0] for c in CASES} == {b for b in BENCHMARKS if not b.startswith("offline-")}


@pytest.mark.parametrize("bench, fabricate, tasks, method", [(CASES[0][0], CASES[0][1], 10, "l2p"),
                                                             (CASES[3][0], CASES[3][1], 8, "sprompts")],
                         ids=["split-cifar100", "core50"])
def test_colab_profile_runs_end_to_end(bench, fabricate, tasks, method, tmp_path, monkeypatch, capsys):
    """The ``colab`` profile (the paper track cut for a T4) through the same loaders: its cut per class, one epoch
    and batch 128 reach the run's config and its data."""
    from dataclasses import replace

    from cl_peft_lib.profiles import PROFILES

    monkeypatch.setitem(PROFILES, "colab", replace(PROFILES["colab"], num_workers=0))
    data, runs = tmp_path / "data", tmp_path / "runs"
    data.mkdir()
    fabricate(data)
    monkeypatch.setenv("CL_PEFT_DATA", str(data))
    rc = main(["run", "--method", method, "--benchmark", bench, "--profile", "colab", "--backbone", "test_vit_micro",
               "--device", "cpu", "--root", str(runs), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    (f,) = runs.glob(f"colab/{bench}/*/seed0/results.json")
    res = json.loads(f.read_text())
    assert res["status"] == "complete" and len(res["accuracy_matrix"]) == tasks
    assert res["config"]["epochs"] == 1 and res["config"]["batch_size"] == 128
