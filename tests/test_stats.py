"""cl_peft_lib.stats (the one summary over seeds), its users (grid, plots) and scripts/readme_tables.py."""
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from cl_peft_lib.grid import GridRun, format_summary, summarize_grid
from cl_peft_lib.plots import aggregate, aggregate_stats, summary_table
from cl_peft_lib.stats import Summary, describe, format_ci, format_paired, paired

ROOT = Path(__file__).resolve().parents[1]
DATA = [52.0, 58.0, 46.6, 61.25, 49.9]


@pytest.mark.parametrize("n", [2, 3, 5])
@pytest.mark.parametrize("level", [0.95, 0.9])
def test_describe_matches_scipy_t_interval(n, level):
    x = DATA[:n]
    s = describe(x, level=level)
    lo, hi = scipy.stats.t.interval(level, n - 1, loc=np.mean(x), scale=scipy.stats.sem(x))
    assert s.n == n and s.mean == pytest.approx(np.mean(x))
    assert s.std == pytest.approx(np.std(x, ddof=1))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    assert s.sem == pytest.approx(scipy.stats.sem(x)) and s.half_width == pytest.approx((hi - lo) / 2)


def test_sample_not_population_std():
    s = describe(DATA[:3])
    pop = float(np.std(DATA[:3]))  # what plots.aggregate used to report
    assert s.std == pytest.approx(pop * math.sqrt(3 / 2)) and s.std > pop * 1.2


def test_single_seed_has_no_spread():
    s = describe({4: 52.25})
    assert (s.mean, s.std, s.ci_low, s.ci_high, s.n, s.seeds) == (52.25, None, None, None, 1, (4,))
    assert format_ci(s) == "52.2 (1 seed)" and "±" not in format_ci(s)
    assert s.to_dict()["std"] is None
    with pytest.raises(ValueError, match="n >= 2"):
        Summary(1.0, 0.0, 1, None, None)


def test_format_ci_shows_mean_std_interval():
    s = describe(DATA[:3])
    assert format_ci(s) == f"{s.mean:.1f} ± {s.std:.1f} [{s.ci_low:.1f}, {s.ci_high:.1f}]"
    assert format_ci(s, digits=2, ci=False) == f"{s.mean:.2f} ± {s.std:.2f}"
    assert format_ci(describe([-0.01, 0.02, -0.02]), signed=True) == "+0.0 ± 0.0 [-0.1, 0.0]"  # never "-0.0"


def test_describe_refuses_bad_input():
    for bad, msg in [([], "no values"), ([1.0, float("nan")], "finite"), ({0: 1.0, 1: float("inf")}, "finite")]:
        with pytest.raises(ValueError, match=msg):
            describe(bad)
    with pytest.raises(ValueError, match="2 seeds for 3 values"):
        describe([1.0, 2.0, 3.0], seeds=[0, 1])
    with pytest.raises(ValueError, match="duplicate"):
        describe([1.0, 2.0], seeds=[3, 3])
    with pytest.raises(ValueError, match="level"):
        describe([1.0, 2.0], level=95)


def test_paired_matches_by_seed_not_position():
    a = {0: 60.0, 1: 70.0, 2: 65.0}
    b = {3: 10.0, 2: 66.0, 0: 58.0}  # other order, seed 1 missing, seed 3 extra
    p = paired(a, b)
    assert p.diff.seeds == (0, 2) and p.diff.values == (2.0, -1.0)  # 60-58, 65-66
    assert (p.wins, p.ties, p.losses, p.n, p.frac_wins) == (1, 0, 1, 2, 0.5)
    assert (p.only_a, p.only_b) == ((1,), (3,))
    ref = describe([2.0, -1.0])
    assert (p.diff.mean, p.diff.std, p.diff.ci_low) == (ref.mean, ref.std, ref.ci_low)
    lo, hi = scipy.stats.t.interval(0.95, 1, loc=0.5, scale=scipy.stats.sem([2.0, -1.0]))
    assert (p.diff.ci_low, p.diff.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    txt = format_paired(p, a="l2l", b="l2p")
    assert txt.startswith("+0.5 ± 2.1 [") and "l2l > l2p on 1/2 seeds" in txt and "l2l alone: [1]" in txt
    d = p.to_dict()
    assert d["wins"] == 1 and d["only_b"] == [3] and json.loads(json.dumps(d)) == d


def test_paired_refuses_positions_and_disjoint_seeds():
    with pytest.raises(TypeError, match="by seed"):
        paired([1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="no seed in common"):
        paired({0: 1.0}, {1: 1.0})
    with pytest.raises(ValueError, match="without seeds"):
        paired(describe([1.0, 2.0]), {0: 1.0})
    one = paired(describe({5: 3.0, 6: 1.0}), {5: 1.0})
    assert one.n == 1 and one.diff.std is None and format_paired(one).startswith("+2.0 (1 seed); a > b on 1/1 seed")


def _grid_runs():
    acc = {("l2p", 0): 60.0, ("l2p", 1): 66.0, ("l2p", 2): 71.5, ("l2l", 0): 52.0}
    runs = [GridRun(m, "offline-cil", s, "x", status="complete",
                    metrics={"average_accuracy": v, "average_incremental_accuracy": v + 1, "forgetting": 100 - v,
                             "backward_transfer": v - 100}) for (m, s), v in acc.items()]
    runs.append(GridRun("l2l", "offline-cil", 1, "x", status="failed", metrics=None))
    return runs, acc


def test_grid_summary_uses_the_stats_function():
    runs, acc = _grid_runs()
    summary = summarize_grid(runs)
    cell = summary["offline-cil"]["l2p"]
    ref = describe({s: acc[("l2p", s)] for s in (0, 1, 2)})
    assert cell["average_accuracy"] == ref.to_dict() and cell["seeds"] == [0, 1, 2] and cell["n"] == 3
    assert {"mean", "std", "n", "ci_low", "ci_high"} <= set(cell["forgetting"])
    assert cell["average_accuracy"]["std"] == pytest.approx(np.std([60.0, 66.0, 71.5], ddof=1))
    one = summary["offline-cil"]["l2l"]  # the failed seed is left out
    assert one["n"] == 1 and one["average_accuracy"]["std"] is None and one["average_accuracy"]["ci_low"] is None
    txt = format_summary(json.loads(json.dumps(summary)))  # as read back from grid.json
    assert f"{ref.mean:.2f} ± {ref.std:.2f} [{ref.ci_low:.2f}, {ref.ci_high:.2f}] (3)" in txt
    assert "52.00 (1 seed)" in txt and "± 0.00" not in txt
    old = {"b": {"m": {"average_accuracy": {"mean": 1.0, "std": 0.5, "n": 2}}}}  # grid.json of before the intervals
    assert "1.00 ± 0.50 (2)" in format_summary(old)
    old["b"]["m"]["average_accuracy"].update(std=0.0, n=1)
    assert "1.00 (1 seed)" in format_summary(old)


def _result(seed, final_row, params=1234):
    return {"seed": seed, "accuracy_matrix": [[90.0], final_row], "trainable_params": params}


def test_plots_aggregate_and_table_use_the_stats_function():
    rs = [_result(0, [60.0, 80.0]), _result(1, [50.0, 82.0]), _result(2, [70.0, 90.0])]
    finals = [70.0, 66.0, 80.0]  # mean of each final row
    st = aggregate_stats(rs)["average_accuracy"]
    assert st.seeds == (0, 1, 2) and st.values == tuple(finals)
    assert aggregate(rs)["average_accuracy"] == (pytest.approx(np.mean(finals)), pytest.approx(np.std(finals, ddof=1)))
    table = summary_table({"l2p": rs, "alone": rs[:1]})
    assert f"| l2p | 3 | {format_ci(describe(finals))} |" in table
    assert "| alone | 1 | 70.0 (1 seed) | 30.0 (1 seed) | 1,234 |" in table and "± 0.0" not in table
    assert aggregate(rs[:1])["forgetting"] == (30.0, 0.0)  # error bars: none drawn for one run


# --------------------------------------------------------------------------- scripts/readme_tables.py
@pytest.fixture(scope="module")
def rt():
    spec = importlib.util.spec_from_file_location("readme_tables", ROOT / "scripts" / "readme_tables.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_tables"] = mod  # dataclasses look their module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["readme_tables"]


def _notebook(tmp_path, texts):
    cells = [{"cell_type": "code", "source": [], "outputs": [
        {"output_type": "display_data", "data": {"text/markdown": [t], "text/plain": ["<Markdown>"]}}]} for t in texts]
    p = tmp_path / "nb.ipynb"
    p.write_text(json.dumps({"cells": cells, "metadata": {}}))
    return p


PER_SEED = {("l2p", 0): (60.0, 20.0), ("l2p", 1): (66.0, 18.0), ("l2p", 2): (71.5, 15.0),
            ("l2l", 0): (52.0, 50.0), ("l2l", 1): (61.0, 45.0), ("l2l", 2): (50.0, 55.5)}


def test_readme_tables_from_per_seed_outputs(rt, tmp_path):
    rows = "\n".join(f"| {m} | {s} | {a} | {f} |" for (m, s), (a, f) in PER_SEED.items())
    means = "**offline-cil** (class-incremental, 5 tasks)\n\n| method | seeds | avg. accuracy (%) | forgetting (%) | " \
            "trainable params |\n|---|---|---|---|---|\n| l2p | 3 | 65.8 ± 4.6 | 17.7 ± 2.1 | 17,310 |\n" \
            "| l2l | 3 | 54.3 ± 4.8 | 50.2 ± 4.2 | 99,870 |"
    per_seed = f"**offline-cil**\n\n| method | seed | avg. accuracy (%) | forgetting (%) |\n|---|---|---|---|\n{rows}"
    benches = rt.from_notebook(_notebook(tmp_path, [means, per_seed]))
    b = benches["offline-cil"]
    assert (b.scenario, b.tasks, b.params) == ("class", 5, {"l2p": 17310, "l2l": 99870})
    block = rt.render(benches, "nb.ipynb")
    acc = {m: describe({s: PER_SEED[(m, s)][0] for s in range(3)}) for m in ("l2p", "l2l")}
    fgt = describe({s: PER_SEED[("l2p", s)][1] for s in range(3)})
    assert f"| l2p | 3 | {format_ci(acc['l2p'])} | {format_ci(fgt)} | 17,310 |" in block
    assert block.index("| l2l |") < block.index("| l2p |")  # rows by accuracy
    d = paired({s: PER_SEED[("l2l", s)][0] for s in range(3)}, {s: PER_SEED[("l2p", s)][0] for s in range(3)})
    assert f"L2L − L2P on offline-cil = {format_paired(d, a='l2l', b='l2p')}" in block
    assert block.startswith(rt.BEGIN) and block.endswith(rt.END) and "seeds 0-2" in block

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{rt.BEGIN}\nold numbers\n{rt.END}\n\nrest\n")
    nb = str(tmp_path / "nb.ipynb")
    assert rt.main(["--notebook", nb, "--check", str(readme)]) == 1
    assert rt.main(["--notebook", nb, "--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n\n") and text.endswith("\n\nrest\n") and "old numbers" not in text
    assert format_ci(acc["l2p"]) in text and rt.main(["--notebook", nb, "--check", str(readme)]) == 0


def test_readme_tables_refuse_means_only(rt, tmp_path, capsys):
    means = "**offline-dil** (domain-incremental, 4 tasks)\n\n| method | seeds | avg. accuracy (%) | forgetting (%) " \
            "| trainable params |\n|---|---|---|---|---|\n| slora | 3 | 89.5 ± 0.3 | 1.5 ± 0.0 | 155,176 |"
    nb = _notebook(tmp_path, [means, "offline-dil: slora - sprompts = +1.0 ± 0.1 points over 3 seed(s)"])
    with pytest.raises(rt.NoPerSeedValues, match="per-method means"):
        rt.from_notebook(nb)
    assert rt.main(["--notebook", str(nb)]) == 2
    assert "README is left alone" in capsys.readouterr().err


def test_readme_tables_from_grid_json_and_run_store(rt, tmp_path):
    runs, acc = _grid_runs()
    grid = {"summary": summarize_grid(runs)}
    b = rt.from_notebook(_notebook(tmp_path, [json.dumps(grid)]))["offline-cil"]
    assert b.values["l2p"] == {s: {"average_accuracy": acc[("l2p", s)], "forgetting": 100 - acc[("l2p", s)]}
                               for s in (0, 1, 2)}
    base = {"scenario": "domain", "profile": "offline", "config": {}, "run": {}, "provenance": {},
            "task_names": ["a", "b"], "class_order": None, "task_id_accuracy": None, "wall_time_s": [],
            "train_logs": [], "trainable_params": 7, "status": "complete", "benchmark": "offline-dil"}
    for m, s, v in [("slora", 0, 90.0), ("slora", 1, 89.0), ("sprompts", 0, 88.0), ("sprompts", 1, 88.5)]:
        p = tmp_path / "store" / "offline-dil" / m / f"seed{s}" / "results.json"
        p.parent.mkdir(parents=True)
        p.write_text(json.dumps({**base, "method": m, "seed": s, "accuracy_matrix": [[v], [v, v]],
                                 "metrics": {"average_accuracy": v, "forgetting": 0.0}}))
    benches = rt.from_runs(tmp_path / "store")
    block = rt.render(benches, "runs")
    d = paired({0: 90.0, 1: 89.0}, {0: 88.0, 1: 88.5})
    assert f"S-LoRA − S-Prompts on offline-dil = {format_paired(d, a='slora', b='sprompts')}" in block
    assert "slora > sprompts on 2/2 seeds" in block and "| slora | 2 |" in block
    with pytest.raises(rt.NoPerSeedValues):
        rt.from_runs(tmp_path / "empty")


def test_accuracy_curves_band_is_the_sample_std():
    import matplotlib

    matplotlib.use("Agg")
    from cl_peft_lib.plots import average_accuracy_curves

    mats = [[[90.0], [60.0, 80.0]], [[80.0], [50.0, 82.0]], [[70.0], [70.0, 90.0]]]
    fig = average_accuracy_curves({"m": mats})
    band = fig.axes[0].collections[0].get_paths()[0].vertices[:, 1]
    curves = np.array([[90.0, 70.0], [80.0, 66.0], [70.0, 80.0]])
    top = curves.mean(0) + curves.std(0, ddof=1)
    assert np.isclose(band.max(), top.max()) and not np.isclose(band.max(), (curves.mean(0) + curves.std(0)).max())


def test_the_readme_timing_sentence_reads_either_way(rt):
    base = {"tune_runs": 102, "head_to_head_runs": 105, "runs": 207, "invocations": 3, "slots": [12, 14]}
    over = rt.timing_sentence({**base, "wall_s": 1316.6})
    within = rt.timing_sentence({**base, "wall_s": 1100.0})
    assert "1,317 s (21.9 min, over the 20-min target)" in over and "12–14 runs at a time" in over
    assert "(18.3 min, within the 20-min target)" in within
    assert rt.timing_sentence(None) is None and rt.timing_sentence({**base, "runs": 0, "wall_s": 0}) is None
    scoped = rt.timing_sentence({**base, "wall_s": 700.0}, "the paper's methods")
    assert scoped.startswith("Wall time of `cl-peft protocol` restricted to the paper's methods for tuning")
    assert "(11.7 min, within the 20-min target)" in scoped


def test_accuracy_curves_draw_each_method_in_the_books_colour():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.colors import to_hex

    from cl_peft_lib.plots import METHOD_COLORS, average_accuracy_curves

    R = [[50.0], [40.0, 60.0]]
    fig = average_accuracy_curves({"l2p": [R, R], "l2l (rank 1)": [R], "something else": [R]})
    ax = fig.axes[0]
    lines = {ln.get_label(): to_hex(ln.get_color()) for ln in ax.lines}
    assert lines["l2p"] == to_hex(METHOD_COLORS["l2p"]) and lines["l2l (rank 1)"] == to_hex(METHOD_COLORS["l2l"])
    assert all(t.get_fontsize() >= 9 for t in ax.get_legend().get_texts())
    assert all(float(x).is_integer() for x in ax.get_xticks())  # whole tasks on the axis


def test_the_readme_laptop_sentence_reads_either_way(rt):
    def benches(d_class, d_domain):
        out = {}
        for name, sc, a, c, d in (("offline-cil", "class", "l2l", "l2p", d_class),
                                  ("offline-dil", "domain", "slora", "sprompts", d_domain)):
            b = out[name] = rt.Bench(name, sc)
            for s, noise in enumerate((0.0, 0.3, -0.2)):
                b.put(c, s, "average_accuracy", 50.0, "t")
                b.put(a, s, "average_accuracy", 50.0 + d + noise, "t")
        return out
    off = benches(10.0, 3.0)
    both = rt.laptop_sentence(benches(12.0, 2.0), off, "x.json", {"cpu_count": 4})
    assert "interval clear of zero: L2L − L2P, S-LoRA − S-Prompts." in both and "Not resolved" not in both
    one = rt.laptop_sentence(benches(12.0, 0.05), off, "x.json")
    assert "clear of zero: L2L − L2P." in one and "Not resolved at this size" in one and one.endswith("S-LoRA − S-Prompts.")
    flipped = rt.laptop_sentence(benches(-12.0, 2.0), off, "x.json")
    assert "zero): L2L − L2P." in flipped
    assert rt.laptop_sentence(None, off, "x.json") is None


def test_the_readme_laptop_chapters_sentence_reads_either_way(rt):
    chapters = {"02_pretrained_backbone": {"wall_s": 728.8, "status": "ok", "cpu_count": 2},
                "03_prompt_tuning": {"wall_s": 1000.0, "status": "ok", "cpu_count": 2}}
    lap = rt.laptop_chapters_sentence({"chapters": chapters}, "rec.json")
    assert "02 12.1 min, 03 16.7 min; over the 15-min target (or failed): chapter 03." in lap and "on 2 CPU" in lap
    chapters["03_prompt_tuning"]["wall_s"] = 600.0
    assert "each within the 15-min target." in rt.laptop_chapters_sentence({"chapters": chapters}, "rec.json")
    both = rt.laptop_chapters_sentence({"chapters": chapters}, "r", ["02_pretrained_backbone", "06_ablations"])
    assert both.endswith("each within the 15-min target; not timed: chapter 06.")
    assert rt.laptop_chapters_sentence(None, "x") is None
