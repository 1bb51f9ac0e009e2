"""Static checks of the committed chapter notebooks (nbval executes them separately, under smoke)."""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TOC = (ROOT / "_toc.yml").read_text()


def _cells(nb):
    return [("".join(c["source"]), c) for c in nb["cells"]]


def test_every_chapter_is_in_the_toc():
    assert NOTEBOOKS, "no notebooks"
    for p in NOTEBOOKS:
        assert f"notebooks/{p.stem}" in TOC, f"{p.name} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_structure(path):
    nb = json.loads(path.read_text())
    cells = _cells(nb)
    params = [s for s, c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    assert 'os.environ.get("CL_PEFT_PROFILE", "offline")' in params[0], "the parameters cell defaults to offline"
    url = re.search(r"^repository:\s*\n\s+url:\s*(\S+)", (ROOT / "_config.yml").read_text(), re.M).group(1)
    setup = [s for s, c in cells if "REPO_URL =" in s]
    assert setup and f'REPO_URL = "{url}"' in setup[0], "the set-up cell must install from _config.yml's repository url"
    assert any("provenance_line(" in s for s, _ in cells), "a provenance line is printed"
    assert any("stack_explorer(" in s or "nested_explorer(" in s for s, _ in cells), "at least one explorer"
    assert any(re.search(r"^\s*assert ", s, re.M) for s, c in cells if c["cell_type"] == "code"), \
        "assertion cells that can fail"


#: Chapters whose committed outputs come from the H200 (offline profile): all of them
#: (``make execute PROFILE=offline DEVICE=cuda``). A new chapter joins this set once it has been
#: executed there; until then its smoke-profile CPU outputs are accepted.
GPU_EXECUTED = {"01_continual_learning", "02_pretrained_backbone", "03_prompt_tuning", "04_lora",
                "05_head_to_head", "06_ablations", "07_efficiency", "08_after_the_swap"}
#: Of those, chapters that train nothing in their committed execution: they read runs the H200 made
#: (their provenance line says ``runs_device=NVIDIA ...``) and may be drawn on any machine.
GPU_RUNS = {"05_head_to_head", "08_after_the_swap"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_outputs_are_clean(path):
    """The book shows these outputs: no errors, a provenance line, widget state stored; GPU chapters from the H200."""
    nb = json.loads(path.read_text())
    outs = [o for _, c in _cells(nb) if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert outs, f"{path.name} has no outputs: execute it (make execute PROFILE=offline DEVICE=cuda)"
    assert not [o for o in outs if o.get("output_type") == "error"], f"{path.name} has an error output"
    text = "".join("".join(o.get("text", "")) for o in outs if o.get("output_type") == "stream")
    assert re.search(r"device=.*\| profile=(offline|smoke|paper)", text), f"{path.name} has no provenance line"
    if path.stem in GPU_EXECUTED:
        assert "profile=offline" in text, f"{path.name} was not executed with the offline profile"
        if path.stem in GPU_RUNS:
            assert re.search(r"(runs|results)_device=NVIDIA", text), f"{path.name}: its runs were not made on a GPU"
        else:
            assert re.search(r"(?<!runs_)(?<!results_)device=NVIDIA", text), f"{path.name} was not executed on a GPU"
    assert "application/vnd.jupyter.widget-state+json" in nb.get("metadata", {}).get("widgets", {}), \
        f"{path.name} has no stored widget state (execute with store_widget_state=True)"


#: Chapters whose committed outputs predate the inline-backend fix of scripts/execute_notebooks.py
#: (they were executed with MPLBACKEND=Agg, so they hold no image/png output at all) and still await
#: re-execution on the GPU (``make execute PROFILE=offline DEVICE=cuda NOTEBOOKS=...``). REMOVE a
#: chapter from this set when its re-executed notebook is committed: the xfail is strict, so a
#: listed chapter that has its figures fails the suite ("XPASS(strict)") until it is removed.
#: (07_efficiency draws no static figure, only an explorer, so it has nothing to await.)
AWAITING_GPU_FIGURES: set[str] = set()
#: notebook metadata written by scripts/execute_notebooks.py (how the outputs were produced)
EXECUTION_KEY = "cl_peft_execution"
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _figure_cells(nb):
    """(index, cell) of every code cell that draws a figure: it calls ``plt.show()`` /
    ``fig.show()`` / ``display(fig...)``, or an output of it is a Figure's repr (a returned Figure
    that no inline backend rendered)."""
    found = []
    for i, (src, c) in enumerate(_cells(nb)):
        if c["cell_type"] != "code":
            continue
        code = "\n".join(l.split("#", 1)[0] for l in src.splitlines())  # drop comments
        draws = re.search(r"\b(plt|fig\w*)\.show\(\s*\)|\bdisplay\(\s*fig\w*\s*[,)]", code)
        returned = any(
            "".join(o.get("data", {}).get("text/plain", "")).startswith("<Figure size")
            for o in c.get("outputs", [])
        )
        if draws or returned:
            found.append((i, c))
    return found


def _figure_params():
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        # a chapter executed by the fixed script (its metadata says so) is never excused
        reexecuted = nb.get("metadata", {}).get(EXECUTION_KEY, {}).get("mpl_backend") == INLINE_BACKEND
        if p.stem in AWAITING_GPU_FIGURES and not reexecuted:
            yield pytest.param(p, id=p.stem, marks=pytest.mark.xfail(
                strict=True,
                reason="committed outputs were executed with MPLBACKEND=Agg (no image/png); "
                       "awaiting GPU re-execution: remove the chapter from AWAITING_GPU_FIGURES then"))
        else:
            yield pytest.param(p, id=p.stem)


@pytest.mark.parametrize("path", _figure_params())
def test_every_figure_is_stored_as_png(path):
    """Every cell that draws a figure has an image/png output (the book shows the stored outputs)."""
    nb = json.loads(path.read_text())
    cells = _figure_cells(nb)
    missing = [i for i, c in cells
               if not any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]
    assert not missing, (f"{path.name}: figure cells without an image/png output: {missing} "
                         "(execute with scripts/execute_notebooks.py: inline backend, not MPLBACKEND=Agg)")


def test_reexecuted_chapters_leave_the_awaiting_list():
    """A chapter executed with the inline backend must not stay excused in AWAITING_GPU_FIGURES."""
    stale = sorted(p.stem for p in NOTEBOOKS if p.stem in AWAITING_GPU_FIGURES and
                   json.loads(p.read_text()).get("metadata", {}).get(EXECUTION_KEY, {})
                   .get("mpl_backend") == INLINE_BACKEND)
    assert not stale, f"re-executed with the inline backend, remove from AWAITING_GPU_FIGURES: {stale}"
    assert AWAITING_GPU_FIGURES <= {p.stem for p in NOTEBOOKS}, "AWAITING_GPU_FIGURES names a missing chapter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stray_string_repr_in_outputs(path):
    """A cell whose last expression returns a string (e.g. a bare ``glue(...)``, which returns its value) prints
    the string's repr on the page; glue calls end in ``_ = glue(...)``."""
    nb = json.loads(path.read_text())
    for i, c in enumerate(nb["cells"]):
        for o in c.get("outputs", []):
            text = "".join(o.get("data", {}).get("text/plain", "")) if o.get("output_type") == "execute_result" else ""
            assert not (set(o.get("data", {})) == {"text/plain"} and text[:1] in "'\"" and text), (
                f"{path.name} cell {i} shows a string repr: {text[:80]}")
        src = "".join(c["source"]) if c["cell_type"] == "code" else ""
        last = [ln for ln in src.rstrip().splitlines() if ln and not ln.startswith((" ", "\t", ")", "#"))]
        assert not (last and re.match(r"(prose\.)?glue\(", last[-1])), f"{path.name} cell {i}: end with `_ = glue(...)`"
