"""Model selection on validation data: equal budgets, checked before anything runs, selections that
know what they were made for, and ``cl-peft tune`` end to end on the smoke profile."""
import json

import pytest

from cl_peft_lib.cli import main as cli_main
from cl_peft_lib.tuning import (BUDGET, SEARCH_SPACES, TuningError, check_space, load_selection, selected_options,
                                selection_path, tune)

BB = "test_vit_micro"


def test_every_search_space_has_the_same_budget_and_valid_options():
    assert {len(s) for s in SEARCH_SPACES.values()} == {BUDGET}
    assert {"l2p", "l2l", "sprompts", "slora"} <= set(SEARCH_SPACES)
    for m in SEARCH_SPACES:
        assert check_space(m, None, BUDGET)  # every configuration builds the method's config


@pytest.mark.parametrize("method,space,budget,needle", [
    ("l2p", [], BUDGET, "no search space"),
    ("ncm", None, BUDGET, "no search space"),
    ("l2p", [{"lr": x} for x in (0.1, 0.2, 0.3)], 2, "over the budget of 2"),
    ("l2p", [{"lr": 0.1}, {"lr": 0.1}], BUDGET, "repeats a configuration"),
    ("l2p", [{"rank": 2}], BUDGET, "unknown option"),
    ("l2p", [{"lr": "abc"}], BUDGET, "lr must be a float"),
])
def test_bad_search_spaces_are_refused_before_any_run(method, space, budget, needle, tmp_path):
    def no_run(*a, **k):
        raise AssertionError("nothing may run")

    with pytest.raises((TuningError, ValueError), match=needle):
        tune([method], "offline-cil", "smoke", spaces={method: space} if space is not None else None, budget=budget,
             root=tmp_path, run=no_run, log=None)


def test_a_selection_from_another_benchmark_or_profile_is_refused(tmp_path):
    p = selection_path("smoke", "offline-cil", "l2p", tmp_path)
    p.parent.mkdir(parents=True)
    p.write_text(json.dumps({"schema": "cl-peft-tune/1", "method": "l2p", "benchmark": "offline-dil",
                             "profile": "smoke", "selected": {"lr": 0.01}}))
    with pytest.raises(TuningError, match="tuned for benchmark 'offline-dil'"):
        load_selection("smoke", "offline-cil", "l2p", tmp_path)
    p.write_text(json.dumps({"schema": "cl-peft-tune/1", "method": "l2p", "benchmark": "offline-cil",
                             "profile": "smoke", "selected": {"lr": 0.01}}))
    with pytest.raises(TuningError, match="tuned for profile 'smoke', not 'offline'"):
        load_selection("offline", "offline-cil", "l2p", tmp_path, path=p)
    with pytest.raises(TuningError, match="cl-peft tune"):
        load_selection("smoke", "offline-cil", "l2l", tmp_path)


def test_tune_selects_by_validation_accuracy_and_the_head_to_head_reads_it(tmp_path, capsys):
    space = [{"lr": 0.03}, {"lr": 1e-6}]  # a working rate and one that cannot learn in 2 epochs
    sel = tune(["linear_probe"], "offline-dil", "smoke", seeds=[1000], spaces={"linear_probe": space}, root=tmp_path,
               log=None, workers=1, backbone=BB)["linear_probe"]
    assert [t["options"] for t in sel["trials"]] == space
    means = [t["mean"] for t in sel["trials"]]
    assert sel["selected"] == space[means.index(max(means))] and sel["selected_val_average_accuracy"] == max(means)
    assert sel["selected"] == {"lr": 0.03}, means
    assert selected_options("smoke", "offline-dil", "linear_probe", tmp_path) == {"lr": 0.03}
    runs = list((tmp_path / "smoke" / "offline-dil").glob("*/seed1000/results.json"))
    assert len(runs) == 2 and all("validation" in json.loads(r.read_text()) for r in runs)


def test_cli_tune_refuses_bad_input_with_one_line(capsys, tmp_path):
    assert cli_main(["tune", "--methods", "ncm", "--benchmark", "offline-cil", "--profile", "smoke",
                     "--root", str(tmp_path)]) == 2
    assert "no search space for 'ncm'" in capsys.readouterr().err
    assert cli_main(["tune", "--methods", "l2p", "--benchmark", "nope", "--profile", "smoke",
                     "--root", str(tmp_path)]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err


def test_tuning_without_validation_data_is_refused_before_any_run(monkeypatch, tmp_path):
    from dataclasses import replace

    from cl_peft_lib.profiles import PROFILES

    monkeypatch.setitem(PROFILES, "smoke", replace(PROFILES["smoke"], val_fraction=0.0))

    def no_run(*a, **k):
        raise AssertionError("nothing may run")

    with pytest.raises(TuningError, match="no validation data"):
        tune(["l2p"], "offline-cil", "smoke", root=tmp_path, run=no_run, log=None)
