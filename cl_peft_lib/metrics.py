"""Metrics of a continual-learning run, computed from its accuracy matrix.

``R[t][i]`` is the test accuracy (in %) on task ``i`` after training on tasks
``0..t``; entries with ``i > t`` are not measured (``nan``). T is the number of
tasks.

Chapter: ``notebooks/01_continual_learning.ipynb`` (the accuracy matrix and its metrics).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def as_matrix(R: Sequence[Sequence[float | None]]) -> np.ndarray:
    """``R`` as a square float array with ``nan`` above the diagonal; validates the shape."""
    T = len(R)
    A = np.full((T, T), np.nan)
    for t, row in enumerate(R):
        if len(row) < t + 1:
            raise ValueError(f"row {t} of the accuracy matrix has {len(row)} entries; needs at least {t + 1}")
        A[t, : t + 1] = [np.nan if v is None else float(v) for v in row[: t + 1]]
    if np.isnan(np.tril(A)[np.tril_indices(T)]).any():
        raise ValueError("the accuracy matrix has missing entries on or below the diagonal")
    return A


def average_accuracy(R) -> float:
    r"""Final average accuracy :math:`A_T = \frac{1}{T}\sum_{i=1}^{T} R_{T,i}`."""
    A = as_matrix(R)
    return float(np.mean(A[-1, :]))


def average_incremental_accuracy(R) -> float:
    r"""Average of the step-wise averages, :math:`\bar A = \frac{1}{T}\sum_{t=1}^{T} \frac{1}{t}\sum_{i=1}^{t} R_{t,i}`."""
    A = as_matrix(R)
    return float(np.mean([np.mean(A[t, : t + 1]) for t in range(len(A))]))


def forgetting(R) -> float:
    r"""Average forgetting as L2P and DualPrompt report it (Chaudhry et al. 2018).

    :math:`F = \frac{1}{T-1}\sum_{i=1}^{T-1} \max_{t \in \{i,\dots,T-1\}} (R_{t,i} - R_{T,i})`,
    the drop from the best accuracy a task ever had (before the last step) to its
    final accuracy, averaged over all tasks but the last. 0 for a single task.
    """
    A = as_matrix(R)
    T = len(A)
    if T < 2:
        return 0.0
    return float(np.mean([np.max(A[i:T - 1, i]) - A[T - 1, i] for i in range(T - 1)]))


def backward_transfer(R) -> float:
    r"""Backward transfer (Lopez-Paz & Ranzato 2017).

    :math:`BWT = \frac{1}{T-1}\sum_{i=1}^{T-1} (R_{T,i} - R_{i,i})`; negative means forgetting.
    0 for a single task.
    """
    A = as_matrix(R)
    T = len(A)
    if T < 2:
        return 0.0
    return float(np.mean([A[T - 1, i] - A[i, i] for i in range(T - 1)]))


def summarize(R) -> dict[str, float]:
    """All metrics of this module in one dict."""
    return {
        "average_accuracy": average_accuracy(R),
        "average_incremental_accuracy": average_incremental_accuracy(R),
        "forgetting": forgetting(R),
        "backward_transfer": backward_transfer(R),
    }


def format_matrix(R, names: Sequence[str] | None = None) -> str:
    """A plain-text table of ``R`` (rows: after task t; columns: task i)."""
    A = as_matrix(R)
    T = len(A)
    names = list(names) if names else [f"T{i}" for i in range(T)]
    w = max(7, *(len(n) for n in names)) + 1
    lines = ["after".ljust(8) + "".join(n[:w - 1].rjust(w) for n in names)]
    for t in range(T):
        cells = ["" if np.isnan(v) else f"{v:.1f}" for v in A[t]]
        lines.append(f"task {t}".ljust(8) + "".join(c.rjust(w) for c in cells))
    return "\n".join(lines)
