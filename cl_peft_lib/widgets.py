"""Static, kernel-free interactive explorers for every chapter of the book.

Every chapter's "explorer" (a figure with a control to flip between seeds,
methods, tasks, ranks, ...) is built with this module. The trick that keeps
them working in the *static* HTML book, where no Python kernel runs:

1. every view is precomputed in Python and rendered to a PNG,
2. each PNG becomes a ``widgets.Image`` inside a ``widgets.Stack`` (only the
   selected child is shown),
3. the control is tied to the stack with ``widgets.jslink`` -- a link that
   lives entirely in the browser, so it keeps working once the notebook has
   been executed with its widget state stored
   (``nbclient.NotebookClient(..., store_widget_state=True)``, see
   ``scripts/execute_notebooks.py``) and rendered by myst-nb.

Python callbacks (``interact``, ``observe``) would only ever show their first
view in the book; do not use them for anything a reader must be able to see.

``ipywidgets`` and ``matplotlib`` are imported lazily inside the functions, so
``import cl_peft_lib`` works without them.

Example:
    >>> import matplotlib.pyplot as plt
    >>> from cl_peft_lib.widgets import stack_explorer
    >>> views = {}
    >>> for k in (1, 2, 3):
    ...     fig, ax = plt.subplots()
    ...     ax.plot([0, 1], [0, k])
    ...     views[f"slope {k}"] = fig
    >>> stack_explorer(views, "Slope:", control="toggle")  # doctest: +SKIP

Chapter: ``notebooks/01_continual_learning.ipynb`` (the explorers that work without a kernel).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union

if TYPE_CHECKING:  # pragma: no cover - typing only
    import ipywidgets
    from matplotlib.figure import Figure

    View = Union[bytes, Figure]
else:
    View = Any

__all__ = ["figure_to_png", "stack_explorer", "nested_explorer"]

Control = Literal["dropdown", "slider", "toggle"]


def figure_to_png(fig: "Figure", dpi: int = 100, close: bool = True) -> bytes:
    """Render a matplotlib figure to PNG bytes.

    Args:
        fig: The matplotlib figure to render.
        dpi: Resolution of the PNG in dots per inch.
        close: Close the figure afterwards (so notebooks do not also display
            it inline and memory is released).

    Returns:
        The PNG file content.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    if close:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return buf.getvalue()


def _to_png(view: View, dpi: int) -> bytes:
    """Return PNG bytes for a view given as bytes or a matplotlib figure."""
    if isinstance(view, (bytes, bytearray, memoryview)):
        return bytes(view)
    if hasattr(view, "savefig"):
        return figure_to_png(view, dpi=dpi)
    raise TypeError(
        f"a view must be PNG bytes or a matplotlib Figure, got {type(view).__name__}"
    )


def _image(png: bytes) -> "ipywidgets.Image":
    import ipywidgets as widgets

    return widgets.Image(value=png, format="png", layout=widgets.Layout(max_width="100%"))


def _make_control(
    labels: Sequence[str], description: str, control: Control
) -> tuple["ipywidgets.Widget", str]:
    """Create a control widget and name the trait that carries its index.

    ``Dropdown``, ``ToggleButtons`` and ``SelectionSlider`` expose the selected
    position as ``index``, which is synced to the browser (their ``value`` is
    not, so it cannot be jslinked).
    """
    import ipywidgets as widgets

    labels = list(labels)
    # "initial": the description label is as wide as its text (the default, a fixed 90 px, cuts
    # longer ones such as "Trained up to:" into "Trained u...")
    style = {"description_width": "initial"}
    if control == "dropdown":
        w = widgets.Dropdown(options=labels, index=0, description=description, style=style)
        return w, "index"
    if control == "toggle":
        w = widgets.ToggleButtons(options=labels, index=0, description=description, style=style)
        return w, "index"
    if control == "slider":
        w = widgets.SelectionSlider(
            options=labels,
            index=0,
            description=description,
            readout=True,
            continuous_update=True,
            style=style,
        )
        return w, "index"
    raise ValueError(f"control must be 'dropdown', 'slider' or 'toggle', got {control!r}")


def stack_explorer(
    views: Mapping[str, View],
    description: str,
    control: Control = "dropdown",
    dpi: int = 100,
) -> "ipywidgets.VBox":
    """Build a kernel-free explorer that flips between precomputed views.

    Each view becomes a ``widgets.Image`` in a ``widgets.Stack``; the control's
    ``index`` (Dropdown, ToggleButtons, SelectionSlider) is linked to the
    stack's ``selected_index`` with ``widgets.jslink``, i.e. in the browser, so
    the explorer keeps working in the static book.

    Args:
        views: Ordered mapping from a label (shown in the control) to a view:
            PNG bytes or a matplotlib ``Figure`` (rendered and closed here).
        description: Label shown next to the control, e.g. ``"Task:"``.
        control: ``"dropdown"`` (a menu), ``"slider"`` (a ``SelectionSlider``
            whose readout shows the view's label; good for ordered views such
            as tasks or ranks) or ``"toggle"`` (a row of buttons; best for a
            handful of views).
        dpi: Resolution used to render ``Figure`` views.

    Returns:
        A ``VBox`` holding the control and the stack of images; display it as
        the last expression of a cell.

    Raises:
        ValueError: If ``views`` is empty or ``control`` is unknown.
        TypeError: If a view is neither bytes nor a matplotlib figure.
    """
    import ipywidgets as widgets

    if not views:
        raise ValueError("stack_explorer needs at least one view")
    labels = [str(k) for k in views]
    images = [_image(_to_png(v, dpi)) for v in views.values()]
    stack = widgets.Stack(images, selected_index=0)
    ctrl, trait = _make_control(labels, description, control)
    widgets.jslink((ctrl, trait), (stack, "selected_index"))
    box = widgets.VBox([ctrl, stack])
    box.add_class("cl-peft-explorer")
    return box


def nested_explorer(
    views: Mapping[tuple[str, ...], View],
    names: Sequence[str],
    controls: Sequence[Control] | None = None,
    dpi: int = 100,
) -> "ipywidgets.VBox":
    """Build a kernel-free explorer over two factors (e.g. method x task).

    The views form a grid ``outer x inner``: an outer ``Stack`` holds one inner
    ``Stack`` per value of the first factor. The first control is jslinked to
    the outer stack's ``selected_index``; the second control is jslinked to
    *every* inner stack's ``selected_index``, so switching the first factor
    keeps the position chosen for the second. All wiring is client-side.

    Args:
        views: Mapping from ``(outer_label, inner_label)`` to a view (PNG bytes
            or a matplotlib ``Figure``). Every combination of the labels that
            occur must be present. Label order follows first appearance.
        names: Two descriptions, one per control, e.g. ``["Method:", "Task:"]``.
        controls: Control kind per level (default ``["dropdown", "slider"]``).
        dpi: Resolution used to render ``Figure`` views.

    Returns:
        A ``VBox`` with the two controls and the nested stacks.

    Raises:
        ValueError: If ``names`` does not have two entries, a key is not a
            pair, or the grid of views is incomplete.
    """
    import ipywidgets as widgets

    if len(names) != 2:
        raise ValueError(f"nested_explorer supports exactly 2 levels, got names={names!r}")
    controls = list(controls) if controls is not None else ["dropdown", "slider"]
    if len(controls) != 2:
        raise ValueError("controls needs one entry per level")
    if not views:
        raise ValueError("nested_explorer needs at least one view")

    outer: list[str] = []
    inner: list[str] = []
    for key in views:
        if not isinstance(key, tuple) or len(key) != 2:
            raise ValueError(f"keys must be (outer, inner) pairs, got {key!r}")
        o, i = str(key[0]), str(key[1])
        if o not in outer:
            outer.append(o)
        if i not in inner:
            inner.append(i)
    lookup = {(str(k[0]), str(k[1])): v for k, v in views.items()}
    missing = [(o, i) for o in outer for i in inner if (o, i) not in lookup]
    if missing:
        raise ValueError(f"incomplete grid of views; missing {missing[:5]}")

    ctrl_outer, trait_outer = _make_control(outer, names[0], controls[0])
    ctrl_inner, trait_inner = _make_control(inner, names[1], controls[1])
    inner_stacks = []
    for o in outer:
        imgs = [_image(_to_png(lookup[(o, i)], dpi)) for i in inner]
        st = widgets.Stack(imgs, selected_index=0)
        widgets.jslink((ctrl_inner, trait_inner), (st, "selected_index"))
        inner_stacks.append(st)
    outer_stack = widgets.Stack(inner_stacks, selected_index=0)
    widgets.jslink((ctrl_outer, trait_outer), (outer_stack, "selected_index"))
    box = widgets.VBox([ctrl_outer, ctrl_inner, outer_stack])
    box.add_class("cl-peft-explorer")
    return box
