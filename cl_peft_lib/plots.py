"""Figures and tables the chapters share (matplotlib; imported lazily).

Chapters: ``notebooks/01_continual_learning.ipynb`` to ``notebooks/06_ablations.ipynb``.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .metrics import as_matrix, summarize
from .stats import Summary, describe, format_ci


def _ax(ax, figsize=(4.2, 3.4)):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, constrained_layout=True)
    return ax.figure, ax


def accuracy_matrix_heatmap(R, task_names: Sequence[str] | None = None, ax=None, title: str | None = None,
                            vmax: float = 100.0):
    """Heat map of ``R[t][i]`` (rows: after training task t; columns: evaluated on task i), values in %."""
    A = as_matrix(R)
    fig, ax = _ax(ax)
    im = ax.imshow(np.ma.masked_invalid(A), vmin=0, vmax=vmax, cmap="viridis")
    T = len(A)
    for t in range(T):
        for i in range(t + 1):
            ax.text(i, t, f"{A[t, i]:.0f}", ha="center", va="center", fontsize=9,
                    color="white" if A[t, i] < 0.6 * vmax else "black")
    names = list(task_names) if task_names else [str(i + 1) for i in range(T)]
    ax.set_xticks(range(T), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(T), [f"after {i + 1}" for i in range(T)], fontsize=9)
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("trained up to task")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="accuracy (%)", fraction=0.046)
    return fig


def average_accuracy_curves(runs: dict[str, Sequence[Sequence[Sequence[float]]]], ax=None, chance: float | None = None,
                            title: str | None = None):
    """Average accuracy over seen tasks after each task, mean ± sample std over seeds, one line per method.

    Args:
        runs: method name -> list (over seeds) of accuracy matrices.
        chance: draw a dashed chance line (e.g. 100 / number of classes seen at the end).
    """
    fig, ax = _ax(ax, (5.0, 3.4))
    for name, mats in runs.items():
        curves = np.array([[np.mean(as_matrix(R)[t, : t + 1]) for t in range(len(R))] for R in mats])
        x = np.arange(1, curves.shape[1] + 1)
        mu = curves.mean(0)
        method = name.split()[0] if name.split() else name  # "l2l (rank 1)" is drawn in l2l's colour
        color = method_color(method) if method in METHOD_COLORS else None
        ax.plot(x, mu, marker="o", label=name, color=color)
        if len(mats) > 1:  # band: ± the sample std of :func:`cl_peft_lib.stats.describe`
            sd = np.array([describe(curves[:, j]).std for j in range(curves.shape[1])])
            ax.fill_between(x, mu - sd, mu + sd, alpha=0.2, color=ax.lines[-1].get_color())
    if chance is not None:
        ax.axhline(chance, ls="--", c="grey", lw=1, label="chance (final)")
    ax.set_xlabel("tasks learned")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole tasks, no "2.5 tasks learned"
    ax.set_ylabel("average accuracy on seen tasks (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def task_accuracy_bars(runs: dict[str, Sequence[Sequence[float]]], t: int, task_names: Sequence[str], ax=None):
    """Accuracy on every task seen so far after training task ``t``, bars grouped by task, one colour per method."""
    fig, ax = _ax(ax, (5.0, 3.2))
    names = list(runs)
    w = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        row = as_matrix(runs[name])[t, : t + 1]
        ax.bar(np.arange(t + 1) + k * w - 0.4 + w / 2, row, width=w, label=name)
    ax.set_xticks(range(t + 1), list(task_names[: t + 1]), rotation=30, ha="right", fontsize=9)
    ax.set_xlim(-0.6, len(task_names) - 0.4)
    ax.set_ylim(0, 100)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"after training task {t + 1} of {len(task_names)}", fontsize=10)
    ax.legend(fontsize=9, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def sample_grid(scenario, per_task: int = 8, seed: int = 0):
    """A few training images of each task (rows: tasks), with their class names."""
    import matplotlib.pyplot as plt
    import torch

    T = scenario.num_tasks
    fig, axes = plt.subplots(T, per_task, figsize=(per_task * 0.9, T * 1.05), constrained_layout=True)
    axes = np.atleast_2d(axes)
    g = torch.Generator().manual_seed(seed)
    for t, task in enumerate(scenario.tasks):
        idx = torch.randperm(len(task.train), generator=g)[:per_task]
        for j, i in enumerate(idx.tolist()):
            x, y = task.train[i]
            ax = axes[t, j]
            img = x.permute(1, 2, 0).numpy()
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(scenario.class_names[y].split(":")[-1][:9], fontsize=7)
        axes[t, 0].set_ylabel(task.name, fontsize=9)
    return fig


def aggregate_stats(results: Sequence[dict[str, Any]]) -> dict[str, Summary]:
    """Per metric of :func:`cl_peft_lib.metrics.summarize`, its :class:`~cl_peft_lib.stats.Summary` over the runs.

    Values are keyed by each run's ``seed`` when every run has a distinct one (so that
    :func:`cl_peft_lib.stats.paired` can match two methods by seed).
    """
    if not results:
        raise ValueError("no runs to aggregate")
    ms = [summarize(r["accuracy_matrix"]) for r in results]
    seeds = [r.get("seed") for r in results]
    keyed = None not in seeds and len(set(seeds)) == len(seeds)
    return {k: describe([m[k] for m in ms], seeds=seeds if keyed else None) for k in ms[0]}


def aggregate(results: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """``(mean, sample std)`` over seeds of each metric of :func:`cl_peft_lib.metrics.summarize`, for error bars.

    The standard deviation is :func:`cl_peft_lib.stats.describe`'s (``ddof=1``); with one run
    it is undefined and returned as 0.0 so that an error bar simply is not drawn. Tables use
    :func:`aggregate_stats` and :func:`cl_peft_lib.stats.format_ci`, which say "(1 seed)" instead.
    """
    return {k: (s.mean, s.std if s.std is not None else 0.0) for k, s in aggregate_stats(results).items()}


def summary_table(rows: dict[str, Sequence[dict[str, Any]]], extra: dict[str, dict[str, Any]] | None = None,
                  ci: bool = True) -> str:
    """A Markdown table: method -> final average accuracy, forgetting, trainable params.

    Cells are ``mean ± sample std [95% t interval]`` over seeds (``ci=False``: without the
    interval), or ``mean (1 seed)`` for a single run (:func:`cl_peft_lib.stats.format_ci`).
    """
    head = "| method | seeds | avg. accuracy (%) | forgetting (%) | trainable params |" + "".join(
        f" {k} |" for k in next(iter((extra or {}).values()), {}))
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, res in rows.items():
        a = aggregate_stats(res)
        cells = [name, str(len(res)), format_ci(a["average_accuracy"], ci=ci), format_ci(a["forgetting"], ci=ci),
                 f"{res[0]['trainable_params']:,}"]
        cells += [str(v) for v in (extra or {}).get(name, {}).values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def selection_heatmap(freq: np.ndarray, task_names: Sequence[str], ax=None, title: str | None = None,
                      module: str = "prompt"):
    """``freq[t, m]``: fraction of task t's test selections that picked module m (keyed pools)."""
    fig, ax = _ax(ax, (5.2, 3.2))
    im = ax.imshow(freq, vmin=0, vmax=max(float(freq.max()), 1e-6), cmap="magma", aspect="auto")
    ax.set_xticks(range(freq.shape[1]), [str(i) for i in range(freq.shape[1])], fontsize=9)
    ax.set_yticks(range(freq.shape[0]), list(task_names), fontsize=9)
    ax.set_xlabel(f"{module} index in the pool")
    ax.set_ylabel("test images of task")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="fraction of selections", fraction=0.046)
    return fig


def confusion_heatmap(conf: np.ndarray, task_names: Sequence[str], ax=None, title: str | None = None):
    """Task-identification confusion: row = true domain, column = module the image was routed to."""
    fig, ax = _ax(ax, (4.4, 3.6))
    im = ax.imshow(conf * 100, vmin=0, vmax=100, cmap="Blues")
    for i in range(len(conf)):
        for j in range(len(conf)):
            ax.text(j, i, f"{conf[i, j] * 100:.0f}", ha="center", va="center", fontsize=9,
                    color="white" if conf[i, j] > 0.6 else "black")
    names = list(task_names)
    ax.set_xticks(range(len(conf)), names, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(len(conf)), names, fontsize=9)
    ax.set_xlabel("routed to the module of")
    ax.set_ylabel("true domain")
    if title:
        ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label="% of test images", fraction=0.046)
    return fig


#: Each method's family, for one colour per method across the whole book.
FAMILIES: dict[str, str] = {
    "l2p": "prompts", "dualprompt": "prompts", "sprompts": "prompts", "coda": "after 2022",
    "lora": "LoRA", "l2l": "LoRA", "slora": "LoRA", "inflora": "after 2022", "sdlora": "after 2022",
    "ranpac": "after 2022", "ncm": "baselines", "joint": "baselines", "finetune": "baselines",
    "linear_probe": "baselines",
}
#: One colour per method: prompts in blues, LoRA in greens, the methods after the paper in oranges/purples,
#: baselines in greys (the same everywhere in the book).
METHOD_COLORS: dict[str, str] = {
    "l2p": "#1f77b4", "dualprompt": "#6baed6", "sprompts": "#08519c",
    "lora": "#74c476", "l2l": "#238b45", "slora": "#00441b",
    "coda": "#fd8d3c", "ranpac": "#a63603", "inflora": "#807dba", "sdlora": "#54278f",
    "ncm": "#969696", "joint": "#252525", "finetune": "#636363", "linear_probe": "#bdbdbd",
}


def method_color(method: str) -> str:
    """The book's colour of ``method`` (:data:`METHOD_COLORS`; grey for a method it does not know)."""
    return METHOD_COLORS.get(method, "#7f7f7f")
