"""cl_peft_lib.colab: the T4 estimate of each chapter under the ``colab`` profile, and the appendix's table of it."""
import json
import re
from pathlib import Path

import pytest

from cl_peft_lib import colab
from cl_peft_lib.profiles import get_profile

ROOT = Path(__file__).resolve().parents[1]


def _code(chapter: str) -> str:
    nb = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def _fp16(train=1000.0, infer=4000.0, ceiling=650.0, methods=("finetune", "joint", "ncm")):
    cfgs = [{"method": m, "status": "ok", "train_img_s": None if m == "ncm" else train,
             "infer_img_s": {"inference_mode": infer}, "peak_mem_train_gib": None if m == "ncm" else 5.0,
             "peak_mem_infer_gib": 1.0} for m in methods]
    return {"configs": cfgs, "ceiling_runs": [ceiling - 50, ceiling]}


def test_the_appendix_table_is_generated_from_the_packaged_fp16_run():
    text = (ROOT / "book" / "appendix_paper_track.md").read_text()
    block = text.split("<!-- colab: begin -->\n", 1)[1].split("\n<!-- colab: end -->", 1)[0]
    assert block == colab.markdown_table(), "regenerate: python -c 'from cl_peft_lib import colab; print(colab.markdown_table())'"


def test_run_seconds_by_hand():
    """One seed of sequential fine-tuning on Split CIFAR-100 under a profile of 20/10 images per class, 2 epochs:
    10 tasks x 10 classes x 18 training images (2 held out), 2 epochs at 1,000 img/s; evaluations after task t
    cover t+1 tasks of 100 test images (55 task-evaluations), and the final validation pass 10 x 20 images, at
    4,000 img/s. Joint training sees the union of the tasks so far (55 task-epochs instead of 10)."""
    prof = get_profile("colab", train_per_class=20, test_per_class=10, epochs=2)
    fp16 = _fp16()
    ft = colab.run_h200_seconds(colab.Run("finetune", "split-cifar100"), prof, fp16)
    assert ft == pytest.approx(2 * 10 * 180 / 1000 + (55 * 100 + 10 * 20) / 4000)
    jt = colab.run_h200_seconds(colab.Run("joint", "split-cifar100"), prof, fp16)
    assert jt == pytest.approx(2 * 55 * 180 / 1000 + (55 * 100 + 10 * 20) / 4000)
    # NCM trains nothing: one prototype pass over each task's training images, then the same evaluations
    ncm = colab.run_h200_seconds(colab.Run("ncm", "split-cifar100"), prof, fp16)
    assert ncm == pytest.approx((10 * 180 + 55 * 100 + 10 * 20) / 4000)
    # CORe50: every domain holds all 50 classes and is tested on the one shared set
    core = colab.run_h200_seconds(colab.Run("finetune", "core50"), prof, fp16)
    assert core == pytest.approx(2 * 8 * 50 * 18 / 1000 + (36 * 50 * 10 + 8 * 50 * 2) / 4000)


def test_t4_factor_is_the_larger_of_compute_and_bandwidth_ratios():
    f, c = colab.t4_factor(_fp16(ceiling=1300.0))
    assert c == 1300.0 and f == pytest.approx(1300.0 / colab.T4_FP16_TFLOPS)
    f, c = colab.t4_factor(_fp16(ceiling=650.0))
    assert f == pytest.approx(colab.BANDWIDTH_RATIO)


def test_colab_profile_fits_the_chapters_that_train_there():
    """The issue's targets for the chapters a student trains on a T4 (all but chapter 5, which loads there;
    chapter 6 with its colab cut): enlarging the profile or the cut past them fails here."""
    est = {e["chapter"]: e for e in colab.chapter_estimates("colab")}
    for ch in ("01_continual_learning", "02_pretrained_backbone", "03_prompt_tuning", "04_lora", "06_ablations"):
        assert est[ch]["meets"], est[ch]
        assert est[ch]["t4_min"] <= colab.CHAPTER_MINUTES and est[ch]["peak_gib"] <= colab.PEAK_GIB
    assert est["05_head_to_head"]["runs"] == sum(r.seeds for r in colab.protocol_runs("paper")) > 200
    p = get_profile("colab")
    assert p.reference_defaults and p.backbone == get_profile("paper").backbone and p.cil_tasks == 10


def test_chapter_runs_are_the_notebooks_lists():
    """The runs counted for each chapter are the ones its code makes under the paper track."""
    runs = colab.chapter_runs("colab")
    c1 = _code("01_continual_learning")
    assert 'for method in ["finetune", "joint"]' in c1 and "SEEDS = [0, 1, 2]" in c1
    assert {(r.method, r.seeds) for r in runs["01_continual_learning"]} == {("finetune", 3), ("joint", 3)}
    c2 = _code("02_pretrained_backbone")
    assert 'for method in ["ncm", "linear_probe"]' in c2 and '"core50" if PROFILE == "colab"' in c2
    assert {(r.method, r.benchmark) for r in runs["02_pretrained_backbone"]} == {
        (m, b) for m in ("ncm", "linear_probe") for b in ("split-cifar100", colab.CH2_DIL["colab"])}
    bench = {"CIL": "split-cifar100", "DIL": "core50"}
    c3 = re.findall(r'run\("(\w+)", (CIL|DIL)', _code("03_prompt_tuning"))
    assert sorted((m, bench[b]) for m, b in c3) == sorted((r.method, r.benchmark) for r in runs["03_prompt_tuning"])
    c4 = re.findall(r'\("(\w+)", (CIL|DIL)\)', _code("04_lora"))
    ch3 = {(r.method, r.benchmark) for r in runs["03_prompt_tuning"]}
    assert {(m, bench[b]) for m, b in c4} - ch3 == {(r.method, r.benchmark) for r in runs["04_lora"]}
    nb6 = json.loads((ROOT / "notebooks" / "06_ablations.ipynb").read_text())
    out = "".join("".join(o.get("text", "")) for c in nb6["cells"] for o in c.get("outputs", []))
    n = int(re.search(r"(\d+) runs: \d+ matched-budget", out).group(1))  # the committed (offline) execution
    assert sum(r.seeds for r in colab.chapter_runs("paper")["06_ablations"]) == n == _ch6_runs(nb6, "offline")["total"]
    cut = _ch6_runs(nb6, "colab")  # the parameter cell under the colab profile
    got = {}
    for r in runs["06_ablations"]:
        got[r.method] = got.get(r.method, 0) + r.seeds
    assert got == {m: k for m, k in cut.items() if m != "total" and k} and sum(got.values()) == cut["total"]


def _ch6_runs(nb: dict, profile: str) -> dict[str, int]:
    """Chapter 6's runs per method as its parameter cell sets them under ``profile`` (cell 8's job lists)."""
    import os
    from unittest import mock

    cell = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    ns: dict = {}
    with mock.patch.dict(os.environ, {"CL_PEFT_PROFILE": profile}):
        exec("".join(cell["source"]), ns)
    budget = len(ns["BUDGET_SEEDS"]) * len(ns["PROMPT_LENGTHS"])
    sens = len(ns["SENS_LRS"]) * len(ns["SENS_LAYERS"])
    out = {"l2p": budget, "l2l": budget + sens}
    for m in ns["S_METHODS"]:
        out[m] = 2 * len(ns["S_SEEDS"])  # per-domain and shared classifier
    out["total"] = sum(out.values())
    return out


def test_loop_overhead_and_check_sentence_come_from_the_check_record():
    check = {"provenance": {"device": "GPU X", "date": "today"},
             "runs": [{"measured_s": m, "estimated_s": 10.0, "peak_gib": g} for m, g in ((11, 9.0), (16, 9.5), (12, 6.0))]}
    assert colab.loop_overhead(check) == pytest.approx(1.2)
    s = colab.check_sentence(check)
    assert "3 runs of chapters 1 and 3" in s and "1.10-1.60x" in s and "median 1.20" in s and "9.5 GiB" in s
    packaged = json.loads((ROOT / "cl_peft_lib" / "records" / "colab_check.json").read_text())
    assert packaged["profile"] == "colab" and len(packaged["runs"]) == 9
    assert all(r["estimated_s"] == pytest.approx(colab.run_h200_seconds(colab.Run(r["method"], "split-cifar100"),
                                                                        get_profile("colab"), _packaged_fp16()), abs=0.01)
               for r in packaged["runs"]), "the check was made at another profile: run scripts/colab_check.py again"


def _packaged_fp16():
    return json.loads((ROOT / "cl_peft_lib" / "records" / "bench_h200_fp16.json").read_text())


def test_the_banner_prints_the_chapters_estimate_under_colab_only():
    from cl_peft_lib.prose import banner_text

    est = {e["chapter"]: e for e in colab.chapter_estimates("colab")}
    text = banner_text("colab", "vit", "`split-cifar100`", "Tesla T4", chapter="01_continual_learning")
    assert f"Estimated on a free Colab T4: {est['01_continual_learning']['t4_min']:.0f} min" in text and "within" in text
    assert "within" in banner_text("colab", "vit", "d", "T4", chapter="06_ablations")
    assert "Colab T4: " not in banner_text("offline", "vit", "d", "cpu", chapter="01_continual_learning")
    assert colab.chapter_line("07_efficiency") == ""
    for ch in colab.CHAPTER_RUNS:  # each training chapter asks for its own line
        assert f'chapter="{ch}")' in _code(ch), ch
