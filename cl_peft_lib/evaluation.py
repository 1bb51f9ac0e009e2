"""Evaluation settings: how a trained method is scored, kept apart from what it was trained with.

A run's identity (its folder in :mod:`cl_peft_lib.store`, its checkpoint's fingerprint) is
the training: method, config, benchmark, profile, seed, backbone. How the trained method is
*scored* is an :class:`EvalConfig`; the loop scores every run with the defaults, and
:func:`cl_peft_lib.loop.evaluate_run` scores a finished run under any other settings from
its checkpoint, without retraining, storing each evaluation beside the run
(``<run>/eval/<key>.json``).

The defaults follow the reference implementations (l2p-pytorch ``engine.py`` ``evaluate``,
S-Prompts ``methods/sprompt.py`` ``_eval_cnn``): all logits are scored (no masking of classes
not seen yet), the task identity is the method's own guess, prompts are selected per sample.

Chapter: ``notebooks/04_lora.ipynb`` (S-LoRA's merged weights as an evaluation setting); the
oracle evaluation of chapter 6 goes through :func:`cl_peft_lib.loop.evaluate_run`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal


@dataclass(frozen=True)
class EvalConfig:
    """How test (or validation) accuracy is computed.

    Attributes:
        split: ``"test"`` or ``"val"`` (the validation split carved from each task's training data;
            model selection reads only this one).
        mask_unseen: set the logits of classes not seen so far to -inf (a deviation from the
            references, which score all logits; it raises the rows before the last).
        oracle_task_id: methods that identify the task (S-Prompts, S-LoRA) are given the true
            task instead of their k-means guess (an ablation, not a continual learner).
        merged_inference: S-LoRA groups the samples by predicted domain and runs each group
            through peft's merged weights (same predictions, other speed).
        batchwise_selection: key-query methods (L2P, DualPrompt, L2L) use the N modules most chosen
            in the whole test batch for every sample, as the reference codes do at test time; a
            sample's prediction then depends on the rest of its batch.
    """

    split: Literal["test", "val"] = "test"
    mask_unseen: bool = False
    oracle_task_id: bool = False
    merged_inference: bool = False
    batchwise_selection: bool = False

    def __post_init__(self) -> None:
        if self.split not in ("test", "val"):
            raise ValueError(f"evaluation split must be 'test' or 'val', got {self.split!r}")
        for f in fields(self):
            if f.name != "split" and not isinstance(getattr(self, f.name), bool):
                raise ValueError(f"evaluation setting {f.name} must be true or false, got {getattr(self, f.name)!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "EvalConfig":
        """Build from ``{"oracle_task_id": True, ...}``; unknown keys are refused with the valid ones."""
        d = dict(d or {})
        valid = [f.name for f in fields(cls)]
        bad = sorted(set(d) - set(valid))
        if bad:
            raise ValueError(f"unknown evaluation setting(s) {bad}; valid: {', '.join(valid)}")
        return cls(**d)

    def changes(self) -> dict[str, Any]:
        """The settings that differ from the defaults (what names an evaluation file)."""
        default = EvalConfig()
        return {k: v for k, v in asdict(self).items() if getattr(default, k) != v}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The settings every run is scored with while it trains (its ``results.json``).
DEFAULT_EVAL = EvalConfig()
