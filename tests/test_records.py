"""The results files packaged with the library (``cl_peft_lib/records``) are the repository's own."""
from pathlib import Path

import pytest

from cl_peft_lib.records import record_path

ROOT = Path(__file__).resolve().parents[1]

#: packaged name -> the repository file it must copy byte for byte
BENCH_COPIES = {"bench_h200.json": "benchmarks/results_h200.json", "bench_cpu.json": "benchmarks/results_cpu.json",
                "bench_h200_fp16.json": "benchmarks/results_h200_fp16.json"}


@pytest.mark.parametrize("packaged, original", sorted(BENCH_COPIES.items()))
def test_packaged_benchmark_results_equal_the_repository_files(packaged, original):
    """A benchmark re-run that forgets to copy its JSON into cl_peft_lib/records fails here."""
    src = ROOT / original
    assert src.is_file(), f"{original} is missing"
    assert record_path(packaged).read_bytes() == src.read_bytes(), (
        f"cl_peft_lib/records/{packaged} differs from {original}: copy it (cp {original} cl_peft_lib/records/{packaged})")


def test_packaged_files_are_inside_the_package():
    root = ROOT / "cl_peft_lib" / "records"
    for name in [*BENCH_COPIES, "offline_protocol.json"]:
        assert record_path(name).resolve() == (root / name).resolve()


def test_record_path_names_the_files_there_are():
    with pytest.raises(FileNotFoundError) as e:
        record_path("no_such_results.json")
    msg = str(e.value)
    assert "no_such_results.json" in msg
    have = sorted(p.name for p in (ROOT / "cl_peft_lib" / "records").glob("*.json"))
    assert {"bench_h200.json", "bench_cpu.json", "offline_protocol.json"} <= set(have)
    assert msg.endswith("there are: " + ", ".join(have))


def test_the_appendix_table_is_the_published_module():
    """book/appendix_paper_track.md holds published.markdown_table() verbatim between its markers."""
    from pathlib import Path

    from cl_peft_lib.published import PUBLISHED, markdown_table

    text = (Path(__file__).resolve().parents[1] / "book" / "appendix_paper_track.md").read_text()
    block = text.split("<!-- published: begin -->\n", 1)[1].split("\n<!-- published: end -->", 1)[0]
    assert block == markdown_table(), "regenerate the appendix table: python -m cl_peft_lib.published"
    assert all(p.source and p.note for p in PUBLISHED)


def test_the_appendix_fp16_table_is_the_packaged_run():
    """book/appendix_paper_track.md holds bench_report.fp16_markdown() of the packaged fp16 run verbatim."""
    import json
    from pathlib import Path

    from cl_peft_lib.bench_report import fp16_markdown
    from cl_peft_lib.records import record_path

    text = (Path(__file__).resolve().parents[1] / "book" / "appendix_paper_track.md").read_text()
    block = text.split("<!-- fp16: begin -->\n", 1)[1].split("\n<!-- fp16: end -->", 1)[0]
    res = json.loads(record_path("bench_h200_fp16.json").read_text())
    assert block == fp16_markdown(res), "regenerate the appendix's fp16 table from cl_peft_lib/records/bench_h200_fp16.json"
    assert all(r.get("amp") == "fp16" for r in res["configs"] if r.get("status") == "ok" and "train_img_s" in r)


def test_the_laptop_check_record_is_complete_and_the_profile_cuts_data_only():
    """``cl_peft_lib/records/laptop_pairs.json`` (scripts/laptop_check.py; the README's laptop sentence is
    computed from it, tests/test_protocol.py checks the README): both swaps on the same seeds, and the
    ``laptop`` profile differs from ``offline`` in the amount of data (and batch) only."""
    import json

    from cl_peft_lib import protocol
    from cl_peft_lib.profiles import get_profile
    from cl_peft_lib.records import record_path

    lap = json.loads(record_path("laptop_pairs.json").read_text())
    assert lap["schema"] == "cl-peft-laptop-check/1" and lap["profile"] == "laptop"
    seeds = {m: sorted(r["seed"] for r in lap["runs"] if r["method"] == m) for pair in protocol.PAIRS for m in pair}
    assert len(set(map(tuple, seeds.values()))) == 1 and len(seeds["l2p"]) >= 3, seeds
    assert all(0 <= r["average_accuracy"] <= 100 and r["wall_s"] > 0 for r in lap["runs"])
    p, o = get_profile("laptop"), get_profile("offline")
    assert (p.backbone, p.epochs, p.train_augment, p.val_fraction) == (o.backbone, o.epochs, o.train_augment,
                                                                       o.val_fraction)
    assert p.train_per_class < o.train_per_class and p.test_per_class < o.test_per_class


def test_every_chapter_was_executed_under_laptop_within_15_minutes():
    """``cl_peft_lib/records/laptop_chapters.json`` (``make execute PROFILE=laptop TIMES=...``, the README's sentence):
    every chapter of the book executed without error under the laptop profile, each within 15 minutes, on a CPU
    machine with at most the 4 cores the target names."""
    import json

    rec = json.loads(record_path("laptop_chapters.json").read_text())
    assert rec["profile"] == "laptop"
    assert set(rec["chapters"]) == {p.stem for p in (ROOT / "notebooks").glob("0*.ipynb")}
    for name, c in rec["chapters"].items():
        assert c["status"] == "ok" and c["device"] == "cpu" and c["cpu_count"] <= 4, (name, c)
        assert c["wall_s"] <= 15 * 60, (name, c)


def test_chapter_6_starts_from_the_packaged_selections():
    """Chapter 6's committed (offline, GPU) outputs print the selections its ablations started from; they must be
    the packaged protocol's, or the chapter was executed on stale selections and needs executing again."""
    import ast
    import json
    import re

    from cl_peft_lib.tuning import options_of

    nb = json.loads((ROOT / "notebooks" / "06_ablations.ipynb").read_text())
    assert nb["metadata"]["cl_peft_execution"]["profile"] == "offline"
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")
    printed = {m: (ast.literal_eval(opts), float(val)) for m, opts, val in
               re.findall(r"^(\w+)\s+(\{.*?\})\s+\(validation A_T ([\d.]+); offline tuning\)", text, re.M)}
    sel = json.loads(record_path("offline_protocol.json").read_text())["selections"]
    want = {"l2p": "offline-cil", "l2l": "offline-cil", "sprompts": "offline-dil", "slora": "offline-dil"}
    assert set(printed) == set(want), printed
    for m, b in want.items():
        s = sel[b][m]
        assert printed[m] == (options_of(s), round(s["selected_val_average_accuracy"], 1)), (
            f"chapter 6 started {m} from {printed[m]}, the packaged selection is {options_of(s)}: execute it again")
