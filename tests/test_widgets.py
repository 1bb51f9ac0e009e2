"""Unit tests of cl_peft_lib.widgets (no browser; see test_book_browser.py for that)."""

from __future__ import annotations

import pytest

widgets = pytest.importorskip("ipywidgets")
plt = pytest.importorskip("matplotlib.pyplot")

from cl_peft_lib.widgets import figure_to_png, nested_explorer, stack_explorer  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _fig(k: int):
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, k])
    return fig


def _links_between(a, b) -> list:
    """jslinks (``Link`` widgets, synced in the browser) from a trait of `a` to one of `b`."""
    from ipywidgets.widgets.widget import _instances
    from ipywidgets.widgets.widget_link import Link

    return [
        w
        for w in list(_instances.values())
        if isinstance(w, Link) and w.source[0] is a and w.target[0] is b
    ]


def test_figure_to_png_closes_figure():
    fig = _fig(1)
    png = figure_to_png(fig, dpi=50)
    assert png.startswith(PNG_MAGIC)
    assert not plt.fignum_exists(fig.number)


@pytest.mark.parametrize("control", ["dropdown", "slider", "toggle"])
def test_stack_explorer_links_control_client_side(control):
    box = stack_explorer({"a": _fig(1), "b": figure_to_png(_fig(2))}, "View:", control=control)
    ctrl, stack = box.children
    assert isinstance(stack, widgets.Stack)
    assert [type(c) for c in stack.children] == [widgets.Image, widgets.Image]
    assert all(bytes(c.value).startswith(PNG_MAGIC) for c in stack.children)
    assert bytes(stack.children[0].value) != bytes(stack.children[1].value)
    links = _links_between(ctrl, stack)
    assert len(links) == 1
    assert links[0].source[1] == "index" and links[0].target[1] == "selected_index"
    assert "cl-peft-explorer" in box._dom_classes


def test_stack_explorer_rejects_bad_input():
    with pytest.raises(ValueError):
        stack_explorer({}, "x")
    with pytest.raises(ValueError):
        stack_explorer({"a": figure_to_png(_fig(1))}, "x", control="knob")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        stack_explorer({"a": "not a figure"}, "x")  # type: ignore[dict-item]


def test_nested_explorer_grid_and_links():
    views = {(m, t): figure_to_png(_fig(i)) for i, (m, t) in enumerate(
        [(m, t) for m in ("L2P", "L2L") for t in ("t1", "t2", "t3")])}
    box = nested_explorer(views, ["Method:", "Task:"])
    outer_ctrl, inner_ctrl, outer = box.children
    assert len(outer.children) == 2 and all(len(s.children) == 3 for s in outer.children)
    assert len(_links_between(outer_ctrl, outer)) == 1
    for inner in outer.children:
        assert len(_links_between(inner_ctrl, inner)) == 1
    # the grid is laid out outer x inner in first-appearance order
    assert bytes(outer.children[1].children[2].value) == views[("L2L", "t3")]


def test_nested_explorer_incomplete_grid():
    png = figure_to_png(_fig(1))
    with pytest.raises(ValueError, match="incomplete"):
        nested_explorer({("a", "x"): png, ("b", "y"): png}, ["A", "B"])
