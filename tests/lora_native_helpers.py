"""Runs through the shared loop for the hand-written qkv LoRA methods' tests (test_inflora, test_sdlora)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from cl_peft_lib.backbones import create_backbone
from cl_peft_lib.loop import RunConfig, run_continual
from cl_peft_lib.methods import METHODS
from cl_peft_lib.profiles import PROFILES
from conftest import make_toy_scenario


def run_toy(name: str, kind: str, options: dict, spy: type | None = None, out=None, step_callback=None,
            **scenario_kw):
    """One smoke run of ``name`` on a toy scenario (no augmentation: the toy classes are positional
    patterns); returns ``(results, the method object)``. ``spy``: a subclass of the method to run instead."""
    made = []
    base = spy or METHODS[name]

    class Keep(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    cfg = RunConfig(name, "toy", "smoke", device="cpu", method_options=options, progress=False,
                    out_dir=str(out) if out else None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(METHODS, name, Keep)
        mp.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], train_augment="none"))
        res = run_continual(cfg, scenario=make_toy_scenario(kind, **scenario_kw),
                            backbone=create_backbone("test_vit_micro"), step_callback=step_callback)
    return res, (made[0] if made else None)


def assert_resume_identical(name: str, options: dict, tmp_path) -> None:
    """Kill a 3-task run in task 2, resume it from its checkpoint: the matrix equals the uninterrupted one."""
    class Killed(Exception):
        pass

    def kill(task, step, method):
        if task == 2 and step == 1:
            raise Killed

    kw = dict(num_tasks=3, classes=6)
    full, _ = run_toy(name, "class", options, out=tmp_path / "full", **kw)
    with pytest.raises(Killed):
        run_toy(name, "class", options, out=tmp_path / "k", step_callback=kill, **kw)
    resumed, _ = run_toy(name, "class", options, out=tmp_path / "k", **kw)
    assert resumed["resumed_from_task"] == 1
    assert resumed["accuracy_matrix"] == full["accuracy_matrix"]
