"""Looking inside a trained method: which modules it selects, which domain it thinks it sees.

Both functions take a :class:`cl_peft_lib.loop.Runner` after :meth:`~cl_peft_lib.loop.Runner.run`.

Chapters: ``notebooks/03_prompt_tuning.ipynb`` and ``notebooks/04_lora.ipynb``.
"""
from __future__ import annotations

import numpy as np
import torch

from .utils import autocast


@torch.no_grad()
def selection_frequencies(runner) -> np.ndarray:
    """For a keyed-pool method (L2P, DualPrompt, L2L): how often each of the M modules is
    selected on each task's test set, as a ``(T, M)`` array of fractions of the selections."""
    m = runner.method
    if not hasattr(m, "pool"):
        raise TypeError(f"method '{m.name}' has no keyed pool")
    rows = []
    m.eval()
    for task in runner.scenario.tasks:
        m.pool.reset_counts()
        for x, _ in runner.model_batches(task.test):
            with autocast(runner.device):
                m.predict(x)
        c = m.pool.counts.float().cpu().numpy()
        rows.append(c / max(c.sum(), 1))
    m.pool.reset_counts()
    return np.stack(rows)


@torch.no_grad()
def task_id_confusion(runner) -> np.ndarray:
    """For a task-identifying method (S-Prompts, S-LoRA): ``(T, T)`` array, row i = true domain,
    column j = fraction of its test images routed to domain j's module."""
    m = runner.method
    if not m.identifies_tasks:
        raise TypeError(f"method '{m.name}' does not identify tasks")
    T = runner.scenario.num_tasks
    out = np.zeros((T, T))
    m.eval()
    for i, task in enumerate(runner.scenario.tasks):
        for x, _ in runner.model_batches(task.test):
            with autocast(runner.device):
                m.predict(x)
            out[i] += np.bincount(m.last_task_ids.cpu().numpy(), minlength=T)[:T]
        out[i] /= max(out[i].sum(), 1)
    return out
