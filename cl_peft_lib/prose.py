"""What the chapters' prose is made of: glued numbers, the opening banner, the takeaway box, verdicts.

No result number is typed into a chapter's Markdown: a code cell computes it and :func:`glue` stores
it under a name, which the Markdown shows with MyST-NB's ``{glue:}`name``` role, so re-executing a
chapter can never leave its text behind. :func:`verdict` picks the sentence that matches the sign
and the confidence interval of a paired difference, so it reads correctly whichever way the
result falls.

:func:`glue` emits exactly what ``myst_nb.glue`` emits (a test compares the two): it is written
here because the kernels that execute the chapters (Colab, the GPU machine) have no Sphinx or
MyST-NB installed, and MyST-NB's own ``glue`` cannot be imported without them.

Chapters: ``notebooks/05_head_to_head.ipynb``, ``notebooks/07_efficiency.ipynb``, ``notebooks/08_after_the_swap.ipynb``.
"""
from __future__ import annotations

from typing import Any, Mapping

#: MyST-NB's mime-type prefix of a glued value that is not displayed in its own cell.
GLUE_PREFIX = "application/papermill.record/"

#: The tracks, as the banner names them.
TRACKS = {
    "smoke": "smoke (CI: a few images per class, 2 epochs; numbers are not results)",
    "offline": "offline (registry data sets, the project's distilled 28-px ViT)",
    "laptop": "laptop (the offline track cut to 50 images per class, for a CPU)",
    "paper": "paper (the paper's data sets, ViT-B/16 pretrained on ImageNet-21k)",
    "colab": ("colab (the paper's data sets and backbones, cut for a free T4; the appendix's 'A free Colab T4' "
              "estimates each chapter's time there)"),
}


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Store ``value`` under ``name`` for the ``{glue:}`` role of the chapter's Markdown; returns ``value``.

    Args:
        name: the key the Markdown names (unique within the chapter).
        value: anything IPython can format (a string, a number, a Markdown object, a figure).
        display: also show it in the cell's output (MyST-NB's default is True; ours False, since the
            Markdown shows it).
    """
    try:
        from myst_nb import glue as _myst_glue  # where MyST-NB is installed, the real thing
    except ImportError:
        _myst_glue = None
    if _myst_glue is not None:
        _myst_glue(name, value, display=display)
        return value
    from IPython.core.formatters import format_display_data
    from IPython.display import display as ipy_display

    bundle, metadata = format_display_data(value)
    prefix = "" if display else GLUE_PREFIX
    metadata = dict(metadata)
    metadata["scrapbook"] = dict(name=name, mime_prefix=prefix)
    ipy_display({prefix + k: v for k, v in bundle.items()}, raw=True, metadata=metadata)
    return value


def glue_all(values: Mapping[str, Any]) -> None:
    """:func:`glue` every ``name -> value`` of ``values`` (not displayed)."""
    for k, v in values.items():
        glue(k, v)


def banner_text(profile: str, backbone: str, data: str, device: str, extra: str | None = None,
                chapter: str | None = None) -> str:
    """The chapter's opening line as MyST Markdown: which track made these outputs, with which backbone,
    data and device (a note box); under the ``colab`` profile also the ``chapter``'s estimated T4 time
    (:func:`cl_peft_lib.colab.chapter_line`)."""
    track = TRACKS.get(profile, profile)
    body = (f"**Outputs on this page:** track **{track}** · backbone `{backbone}` · data {data} · "
            f"device {device}.")
    if extra:
        body += " " + extra
    if chapter and profile == "colab":
        from .colab import chapter_line

        line = chapter_line(chapter)
        body += (" " + line) if line else ""
    return f"```{{note}}\n{body}\n```"


def banner(profile: str, backbone: str, data: str, device: Any, extra: str | None = None,
           chapter: str | None = None) -> None:
    """Display :func:`banner_text` (for a ``remove-input`` cell at the top of a chapter)."""
    from IPython.display import Markdown, display

    dev = getattr(device, "type", str(device))
    if dev == "cuda":
        try:
            import torch

            dev = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - the banner names what it can
            pass
    display(Markdown(banner_text(profile, backbone, data, str(dev), extra, chapter)))


def takeaway_text(points: list[str] | str, title: str = "Takeaway") -> str:
    """A MyST ``tip`` admonition holding ``points`` (a list becomes bullets)."""
    body = points if isinstance(points, str) else "\n".join(f"- {p}" for p in points)
    return f"```{{admonition}} {title}\n:class: tip\n{body}\n```"


def takeaway(points: list[str] | str, title: str = "Takeaway") -> None:
    """Display :func:`takeaway_text` as Markdown (the last cell of a chapter, computed from its results)."""
    from IPython.display import Markdown, display

    display(Markdown(takeaway_text(points, title)))


def fmt(x: float | None, digits: int = 1, signed: bool = False, unit: str = "") -> str:
    """A number for prose: ``fmt(3.14159) == "3.1"``, ``fmt(2, signed=True) == "+2.0"``; ``None`` -> "n/a"."""
    if x is None:
        return "n/a"
    s = f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"
    return s.replace("-", "−") + unit


def verdict(paired: Any, better: str, worse: str, metric: str = "final average accuracy",
            unit: str = " points") -> str:
    """One sentence on a paired difference ``better − worse`` that reads correctly whichever way it fell.

    Args:
        paired: a :class:`cl_peft_lib.stats.PairedSummary` of ``better − worse`` (per-seed differences).
        better, worse: the two methods' names, in the order of the difference.

    Returns:
        e.g. "l2l beats l2p on every one of the 5 seeds: +4.1 points [+2.0, +6.2] (95% interval)." or
        "... the 95% interval includes zero: no difference can be claimed ..."
    """
    d = paired.diff
    n = d.n
    ci = (f" [{fmt(d.ci_low, signed=True)}, {fmt(d.ci_high, signed=True)}] (95% interval)"
          if d.ci_low is not None else " (one seed: no interval)")
    wins, losses = paired.wins, paired.losses
    mean = fmt(d.mean, signed=True) + unit
    if d.ci_low is not None and d.ci_low > 0:
        head = f"{better} beats {worse} in {metric}"
    elif d.ci_high is not None and d.ci_high < 0:
        head = f"{better} falls behind {worse} in {metric}"
    else:
        head = (f"no difference in {metric} between {better} and {worse} can be claimed from these seeds "
                f"(the interval includes zero)")
    return (f"{head}: {better} − {worse} = {mean}{ci}; {better} is ahead on {wins} and behind on {losses} "
            f"of {n} seed{'s' if n != 1 else ''}.")
