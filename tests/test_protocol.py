"""The comparison protocol: grids of cells with their own options, a time limit that loses nothing,
tuning in one grid, the tuned head-to-head on fresh seeds, and the prose helpers (glue, verdicts)."""
import json
import time

import pytest

import cl_peft_lib.grid as grid
from cl_peft_lib import protocol
from cl_peft_lib.cli import main as cli_main
from cl_peft_lib.grid import Cell, run_cells
from cl_peft_lib.stats import paired
from cl_peft_lib.tuning import BUDGET, SEARCH_SPACES, TUNE_SEEDS, TuningError, selection_path, tune_plan, tuned_cells

BB = "test_vit_micro"


class _FakeChild:
    """A child run that writes a complete results.json whose accuracy is the option ``lr`` x 1000."""

    calls: list = []

    def __init__(self, cmd, **kw):
        self.cmd = cmd
        _FakeChild.calls.append(cmd)

    def wait(self):
        c = self.cmd
        out = c[c.index("--out") + 1]
        from pathlib import Path

        from cl_peft_lib.options import parse_opts

        opts = parse_opts([c[i + 1] for i, a in enumerate(c) if a == "--opt"])
        acc = float(opts.get("lr", opts.get("lora_lr", 0.05))) * 1000
        res = {"status": "complete", "profile": c[c.index("--profile") + 1], "metrics": {"average_accuracy": acc},
               "validation": {"average_accuracy": acc},
               "run": {"method": c[c.index("--method") + 1], "benchmark": c[c.index("--benchmark") + 1],
                       "seed": int(c[c.index("--seed") + 1]), "method_options": json.loads(json.dumps(opts)),
                       "backbone": c[c.index("--backbone") + 1] if "--backbone" in c else None}}
        Path(out, "results.json").write_text(json.dumps(res))
        return 0


@pytest.fixture
def fake_children(monkeypatch):
    _FakeChild.calls = []
    monkeypatch.setenv("CL_PEFT_GRID_PROCESS", "fresh")  # a fake child per run (tests/test_worker.py: the workers)
    monkeypatch.setattr(grid.subprocess, "Popen", _FakeChild)
    return _FakeChild.calls


def test_cells_carry_their_own_options_into_their_own_folders(fake_children, tmp_path):
    cells = [Cell("l2p", "offline-cil", 0, {"lr": 0.01}), Cell("l2p", "offline-cil", 0, {"lr": 0.03}),
             Cell("ncm", "offline-dil", 1)]
    g = run_cells(cells, "smoke", tmp_path, workers=2, backbone=BB, log=None)
    assert g["counts"]["complete"] == 3 and len({r["out"] for r in g["runs"]}) == 3
    assert [r["options"] for r in g["runs"]] == [{"lr": 0.01}, {"lr": 0.03}, {}]
    assert g["config"]["opts"] is None and len(g["config"]["cells"]) == 3
    again = run_cells(cells, "smoke", tmp_path, workers=2, backbone=BB, log=None)
    assert again["counts"]["skipped"] == 3 and len(fake_children) == 3  # nothing ran twice
    with pytest.raises(ValueError, match="same run"):
        run_cells([cells[0], cells[0]], "smoke", tmp_path, workers=1, backbone=BB, log=None)
    with pytest.raises(ValueError, match="unknown option"):
        run_cells([Cell("l2p", "offline-cil", 0, {"rank": 3})], "smoke", tmp_path, workers=1, backbone=BB, log=None)


def test_a_passed_deadline_starts_nothing_and_the_same_command_later_finishes(fake_children, tmp_path, capsys):
    args = ["grid", "--methods", "ncm,linear_probe", "--benchmarks", "offline-dil", "--seeds", "0,1",
            "--profile", "smoke", "--backbone", BB, "--workers", "1", "--root", str(tmp_path), "--time-limit", "0",
            "--summary", str(tmp_path / "g.json")]
    time.sleep(0.01)
    assert cli_main(args) == 3  # nothing failed, nothing started
    g = json.loads((tmp_path / "g.json").read_text())
    assert g["counts"]["not_started"] == 4 and g["counts"]["ran"] == 0 and not fake_children
    assert "the same command again" in capsys.readouterr().out
    assert cli_main(args[:-4] + ["--summary", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text())["counts"]["complete"] == 4


def test_a_bad_deadline_variable_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("CL_PEFT_DEADLINE", "tomorrow")
    with pytest.raises(ValueError, match="CL_PEFT_DEADLINE"):
        run_cells([Cell("ncm", "offline-dil", 0)], "smoke", tmp_path, workers=1, backbone=BB, log=None)


def test_tune_plan_puts_every_trial_of_every_benchmark_in_one_grid_and_selects_on_validation(fake_children,
                                                                                            tmp_path):
    calls = []

    def one_grid(cells, **kw):
        calls.append(len(cells))
        return run_cells(cells, **kw)

    spaces = {"l2p": [{"lr": 0.01}, {"lr": 0.03}], "sprompts": [{"lr": 0.02}, {"lr": 0.005}]}
    sels = tune_plan({"offline-cil": ["l2p"], "offline-dil": ["sprompts"]}, "smoke", spaces=spaces, budget=2,
                     root=tmp_path, run=one_grid, log=None, workers=2, backbone=BB)
    assert calls == [4]  # one grid for both benchmarks
    assert sels["offline-cil"]["l2p"]["selected"] == {"lr": 0.03}  # the fake child's accuracy grows with lr
    assert sels["offline-dil"]["sprompts"]["selected"] == {"lr": 0.02}
    assert selection_path("smoke", "offline-dil", "sprompts", tmp_path).exists()
    cells = tuned_cells({"offline-cil": ["ncm", "l2p"]}, [0, 1], "smoke", tmp_path)
    assert [(c.method, c.seed, dict(c.options)) for c in cells] == [("ncm", 0, {}), ("ncm", 1, {}),
                                                                    ("l2p", 0, {"lr": 0.03}), ("l2p", 1, {"lr": 0.03})]
    with pytest.raises(TuningError, match="used for tuning"):
        tuned_cells({"offline-cil": ["l2p"]}, [0, TUNE_SEEDS[0]], "smoke", tmp_path)
    with pytest.raises(TuningError, match="cl-peft tune"):
        tuned_cells({"offline-cil": ["l2l"]}, [0], "smoke", tmp_path)


def test_tuning_under_a_deadline_stores_no_partial_selection(fake_children, tmp_path):
    sels = tune_plan({"offline-cil": ["l2p"]}, "smoke", spaces={"l2p": [{"lr": 0.01}]}, budget=1, root=tmp_path,
                     log=None, workers=1, backbone=BB, deadline=time.time() - 1)
    assert sels == {} and not selection_path("smoke", "offline-cil", "l2p", tmp_path).exists()


def test_the_protocol_plans_are_consistent():
    for profile in protocol.PLANS:
        p, t = protocol.plan(profile), protocol.tuning_plan(profile)
        assert all(set(t[b]) <= set(p[b]) and set(t[b]) <= set(SEARCH_SPACES) for b in p)
        sizes = {len(s) for s in protocol.spaces(profile).values()}
        assert sizes == {protocol.SETTINGS[profile]["budget"]}  # the same budget for every method
        assert not set(protocol.SETTINGS[profile]["seeds"]) & set(TUNE_SEEDS)
        assert len(protocol.SETTINGS[profile]["seeds"]) >= 2  # pairs need two seeds
        for b, ms in protocol.defaults_plan(profile).items():
            assert set(ms) <= set(p[b])
    assert protocol.SETTINGS["offline"]["budget"] == BUDGET and len(protocol.SETTINGS["offline"]["seeds"]) >= 5
    off = protocol.plan("offline")
    for a, b in protocol.PAIRS:
        assert any(a in ms and b in ms for ms in off.values())
    with pytest.raises(KeyError, match="no protocol"):
        protocol.plan("nope")


def test_head_to_head_of_a_profile_without_protocol_is_empty_when_skipping(tmp_path):
    """Chapter 6 asks for chapter 5's views under any profile and falls back to the packaged offline results."""
    for prof in ("laptop", "colab"):
        assert protocol.head_to_head(prof, "tuned", tmp_path, missing="skip") == {}
        with pytest.raises(KeyError, match="profiles with one: offline, paper, smoke"):
            protocol.head_to_head(prof, "defaults", tmp_path)


def test_head_to_head_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="cl-peft protocol"):
        protocol.head_to_head("smoke", "defaults", tmp_path)
    got = protocol.head_to_head("smoke", "defaults", tmp_path, missing="skip")
    assert got["offline-cil"]["l2p"] == []
    assert protocol.head_to_head("smoke", "tuned", tmp_path, missing="skip")["offline-cil"]["l2p"] == []  # untuned
    with pytest.raises((TuningError, FileNotFoundError), match="cl-peft"):
        protocol.head_to_head("smoke", "tuned", tmp_path)


# ------------------------------------------------------------------------------------------------ prose
def test_glue_emits_what_myst_nb_glue_emits(monkeypatch):
    import sys

    import IPython.display
    import myst_nb.ext.glue as mg

    from cl_peft_lib import prose

    seen = []
    monkeypatch.setattr(mg, "ipy_display", lambda *a, **k: seen.append((a, k)))
    mg.glue("x", "+4.1 points", display=False)
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: seen.append((a, k)))
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as in a kernel without MyST-NB
    assert prose.glue("x", "+4.1 points") == "+4.1 points"
    assert len(seen) == 2 and seen[0] == seen[1]
    assert list(seen[1][0][0]) == ["application/papermill.record/text/plain"]


@pytest.mark.parametrize("a,b,head", [
    ({0: 80, 1: 82, 2: 81}, {0: 70, 1: 71, 2: 73}, "l2l beats l2p"),
    ({0: 60, 1: 62, 2: 61}, {0: 70, 1: 71, 2: 73}, "l2l falls behind l2p"),
    ({0: 70, 1: 75, 2: 68}, {0: 72, 1: 71, 2: 70}, "no difference"),
])
def test_the_verdict_follows_the_interval(a, b, head):
    from cl_peft_lib.prose import verdict

    text = verdict(paired(a, b), "l2l", "l2p")
    assert text.startswith(head), text
    p = paired(a, b)
    assert f"ahead on {p.wins} and behind on {p.losses} of 3 seeds" in text


def test_banner_and_takeaway_are_myst_boxes():
    from cl_peft_lib.prose import banner_text, takeaway_text

    assert banner_text("offline", "vit", "x", "NVIDIA H200").startswith("```{note}\n**Outputs on this page:** track")
    t = takeaway_text(["one", "two"])
    assert t.startswith("```{admonition} Takeaway\n:class: tip\n- one\n- two") and t.endswith("```")


def test_the_readme_table_is_the_packaged_protocol_results():
    """The README's head-to-head block is exactly what scripts/readme_tables.py computes from the
    packaged bundle: a new protocol run that is exported but not written into the README fails here."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bundle = root / "cl_peft_lib" / "records" / "offline_protocol.json"
    r = subprocess.run([sys.executable, str(root / "scripts" / "readme_tables.py"), "--bundle", str(bundle),
                        "--check", str(root / "README.md")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_packaged_bundle_imports_into_a_store_and_reads_back(tmp_path):
    from cl_peft_lib.records import record_path

    n = protocol.import_bundle(record_path("offline_protocol.json"), tmp_path)
    assert n["runs"] > 0 and n["selections"] == sum(len(v) for v in protocol.tuning_plan("offline").values())
    h = protocol.head_to_head("offline", "tuned", tmp_path, missing="skip")
    assert sum(len(rs) for per in h.values() for rs in per.values()) <= n["runs"]
    for a, b in protocol.PAIRS:
        bench = next(x for x, ms in protocol.plan("offline").items() if a in ms and b in ms)
        assert paired(protocol.per_seed(h[bench][a]), protocol.per_seed(h[bench][b])).n >= 5
    with pytest.raises(FileNotFoundError, match="no packaged results file .nope.json.; there are: .*offline_protocol.json"):
        record_path("nope.json")


def test_cl_peft_protocol_end_to_end_on_the_smoke_track(monkeypatch, tmp_path, capsys):
    """Tune (2 configurations per method), the tuned head-to-head on 2 fresh seeds and the defaults view,
    with the micro backbone; then export, and import into another store."""
    monkeypatch.setenv("CL_PEFT_BACKBONE", BB)  # every child run inherits it (profiles.get_profile)
    root = tmp_path / "runs"
    assert cli_main(["protocol", "--profile", "smoke", "--root", str(root), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("tuned ") == sum(len(v) for v in protocol.tuning_plan("smoke").values())
    h = protocol.head_to_head("smoke", "tuned", root)
    d = protocol.head_to_head("smoke", "defaults", root)
    for a, b in protocol.PAIRS:
        bench = next(x for x, ms in protocol.plan("smoke").items() if a in ms)
        assert paired(protocol.per_seed(h[bench][a]), protocol.per_seed(h[bench][b])).n == 2
        assert len(d[bench][a]) == 2
    bundle = tmp_path / "bundle.json"
    assert cli_main(["protocol", "--profile", "smoke", "--root", str(root), "--export", str(bundle)]) == 0
    other = tmp_path / "other"
    assert cli_main(["protocol", "--profile", "smoke", "--root", str(other), "--import", str(bundle)]) == 0
    h2 = protocol.head_to_head("smoke", "tuned", other)
    assert {b: {m: [r["accuracy_matrix"] for r in rs] for m, rs in per.items()} for b, per in h2.items()} == \
        {b: {m: [r["accuracy_matrix"] for r in rs] for m, rs in per.items()} for b, per in h.items()}
    assert all("imported_from" in r["provenance"] for per in h2.values() for rs in per.values() for r in rs)
    # the wall time of the invocation is logged and travels with the bundle
    [t] = json.loads(protocol.timing_path("smoke", root).read_text())
    n_trials = sum(len(v) for v in protocol.tuning_plan("smoke").values()) * protocol.SETTINGS["smoke"]["budget"]
    assert t["tune_runs"] == n_trials and t["head_to_head_runs"] > 0 and t["failed"] == 0 and len(t["slots"]) == 2
    tot = protocol.timing_summary(json.loads(bundle.read_text())["timing"])
    assert tot["runs"] == t["tune_runs"] + t["head_to_head_runs"] and tot["slots"] == [2]
    assert tot["wall_s"] == pytest.approx(t["tune_wall_s"] + t["head_to_head_wall_s"], abs=0.1)
    # the defaults view alone: no selections, only runs at the reference defaults
    dv = tmp_path / "defaults.json"
    protocol.export_bundle("smoke", dv, root, views=("defaults",))
    d_only = json.loads(dv.read_text())
    assert d_only["selections"] == {} and d_only["runs"]
    assert all(not r["run"].get("method_options") for r in d_only["runs"])
    assert len(d_only["runs"]) == sum(len(rs) for per in d.values() for rs in per.values())


def test_protocol_restricted_to_some_methods_runs_only_them_and_logs_its_scope(fake_children, tmp_path, capsys):
    root = tmp_path / "runs"
    args = ["protocol", "--profile", "smoke", "--root", str(root), "--workers", "1"]
    assert cli_main(args + ["--methods", "ncm,nope"]) != 0  # refused before anything runs
    err = capsys.readouterr().err
    assert "nope not in the smoke protocol; valid: ncm, l2p, l2l" in err and not fake_children
    assert cli_main(args + ["--methods", "ncm,l2p"]) == 0
    ran = {c[c.index("--method") + 1] for c in fake_children}
    assert ran == {"ncm", "l2p"}
    [t] = json.loads(protocol.timing_path("smoke", root).read_text())
    assert t["methods"] == ["ncm", "l2p"] and t["tune_runs"] == protocol.SETTINGS["smoke"]["budget"]
    assert protocol.timing_summary([t])["runs"] == 0  # not a measurement of the whole plan
    assert protocol.timing_summary([t], ["ncm", "l2p"])["runs"] == t["tune_runs"] + t["head_to_head_runs"]
    scope = protocol.parse_methods(protocol.PAPER_SCOPE, "offline")
    assert set(scope) == {m for ms in protocol.plan("offline").values() for m in ms} - set(protocol.AFTER)


def test_timing_summary_sums_the_invocations_that_ran_something():
    log = [{"tune_wall_s": 400.0, "tune_runs": 36, "head_to_head_wall_s": None, "head_to_head_runs": 0,
            "slots": ["gpu0"] * 12},
           {"tune_wall_s": 0.4, "tune_runs": 0, "head_to_head_wall_s": 0.0, "head_to_head_runs": 0, "slots": []},
           {"tune_wall_s": 1.0, "tune_runs": 0, "head_to_head_wall_s": 300.5, "head_to_head_runs": 90,
            "slots": ["gpu0"] * 14}]
    assert protocol.timing_summary(log) == {"wall_s": 701.5, "invocations": 2, "runs": 126, "tune_runs": 36,
                                            "head_to_head_runs": 90, "slots": [12, 14], "date": None}
    assert protocol.timing_summary([])["wall_s"] == 0


def test_a_grid_summary_never_pools_seeds_of_two_settings(fake_children, tmp_path):
    cells = [Cell("l2p", "offline-cil", s, o) for o in ({"lr": 0.01}, {}) for s in (0, 1)]
    g = run_cells(cells, "smoke", tmp_path, workers=1, backbone=BB, log=None)
    per = g["summary"]["offline-cil"]
    assert set(per) == {"l2p lr=0.01", "l2p (defaults)"}
    assert per["l2p lr=0.01"]["average_accuracy"]["values"] == [10.0, 10.0]  # the fake child: lr x 1000
    assert per["l2p (defaults)"]["average_accuracy"]["values"] == [50.0, 50.0]


def test_every_search_space_moved_from_the_pilot_by_its_rate_axis_only():
    """The final spaces keep the pilot's size and its non-rate axes; only rate axes moved (tuning.py's rule)."""
    from cl_peft_lib.tuning import PILOT_SPACES

    assert set(PILOT_SPACES) == set(SEARCH_SPACES)
    for m, space in SEARCH_SPACES.items():
        pilot = PILOT_SPACES[m]
        assert len(space) == len(pilot) == BUDGET, m
        for k in {k for c in space for k in c} | {k for c in pilot for k in c}:
            if "lr" not in k:
                assert [c.get(k) for c in space] == [c.get(k) for c in pilot], (m, k)


def test_a_stored_selection_of_the_same_trials_is_kept_not_retuned(fake_children, tmp_path):
    spaces = {"l2p": [{"lr": 0.01}, {"lr": 0.03}]}
    kw = dict(spaces=spaces, budget=2, root=tmp_path, log=None, workers=1, backbone=BB)
    first = tune_plan({"offline-cil": ["l2p"]}, "smoke", **kw)
    n = len(fake_children)
    for p in tmp_path.glob("smoke/offline-cil/*/seed*/results.json"):
        p.unlink()  # the trial runs are gone (a packaged bundle holds only the selection)
    again = tune_plan({"offline-cil": ["l2p"]}, "smoke", **kw)
    assert len(fake_children) == n and again["offline-cil"]["l2p"]["selected"] == first["offline-cil"]["l2p"]["selected"]
    other = tune_plan({"offline-cil": ["l2p"]}, "smoke", **{**kw, "spaces": {"l2p": [{"lr": 0.02}, {"lr": 0.03}]}})
    assert len(fake_children) == n + 2 and other["offline-cil"]["l2p"]["selected"] == {"lr": 0.03}
