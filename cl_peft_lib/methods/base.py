"""The interface every continual-learning method implements.

The loop (:func:`cl_peft_lib.loop.run_continual`) drives a method through
Mammoth-style lifecycle hooks and never needs to know which method it runs::

    for t, task in enumerate(scenario.tasks):
        method.begin_task(t, task.classes)          # grow heads/prompts/adapters
        for x, y in batches(task.train):            # epochs, optimizer, schedule from method.cfg
            loss, logs = method.observe(x, y)       # forward + loss (the loop does backward/step)
        method.end_task(t, context)                 # prototypes, k-means, merging ...
        R[t][i] = accuracy(method.predict(x_i), y_i) for i <= t

Chapter: README (``methods/base.py``: the interface of every method).
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, Callable, ClassVar, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation import DEFAULT_EVAL, EvalConfig
from ..options import check_fields, check_range

#: The optimizers :func:`cl_peft_lib.loop.build_optimizer` builds.
Optimizer = Literal["adam", "adamw", "sgd"]
#: The per-task learning-rate schedules.
Schedule = Literal["constant", "cosine"]


@dataclass
class MethodConfig:
    """Training settings every method has; each method subclasses it with its published defaults.

    Attributes:
        epochs: passes over each task's training data.
        batch_size: training batch size.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        lr: base learning rate.
        lr_ref_batch: if set, the learning rate actually used is ``lr * batch_size / lr_ref_batch``
            (linear scaling, as the L2P reference code does with 256).
        momentum: SGD momentum (and Adam's beta1 is left at its default).
        weight_decay: weight decay.
        schedule: ``"constant"`` or ``"cosine"`` (per task, over its steps).
        train_mask: class-incremental only: during training, mask the logits of classes
            outside the current task (L2P's ``train_mask``).
        grad_clip: max gradient norm (None: no clipping).

    Every field is checked on construction (:meth:`__post_init__`): its type from the
    annotation (an int is accepted for a float, a list for a tuple), then its range.
    Subclasses add their own ranges in a ``__post_init__`` that calls ``super().__post_init__()``.

    Raises:
        ValueError: a field of the wrong type or out of range (one line naming the field).
    """

    epochs: int = 5
    batch_size: int = 16
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    lr_ref_batch: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    train_mask: bool = True
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        check_fields(self)  # types, from the annotations (subclasses' and mixins' too)
        check_range(self, "epochs", ge=0)
        check_range(self, "batch_size", ge=1)
        check_range(self, "lr", gt=0)
        check_range(self, "lr_ref_batch", gt=0)
        check_range(self, "momentum", ge=0, lt=1)
        check_range(self, "weight_decay", ge=0)
        check_range(self, "grad_clip", gt=0)
        default = next(f.default for f in fields(self) if f.name == "epochs")
        if self.epochs == 0 and default is not MISSING and default > 0:
            raise ValueError(f"epochs must be >= 1 for {type(self).__name__}: with epochs=0 the method would not "
                             f"train at all (its default is {default}); only training-free methods (ncm) take 0")
        parent = getattr(super(), "__post_init__", None)  # a mixin's checks (e.g. LoRAFields)
        if parent is not None:
            parent()

    @property
    def effective_lr(self) -> float:
        """The learning rate after linear batch-size scaling."""
        return self.lr * self.batch_size / self.lr_ref_batch if self.lr_ref_batch else self.lr

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "MethodConfig":
        """Build from a dict; unknown keys raise a ``ValueError`` listing the valid ones."""
        d = dict(d or {})
        valid = {f.name for f in fields(cls)}
        evals = sorted((set(d) - valid) & {f.name for f in fields(EvalConfig)})
        if evals:
            raise ValueError(f"{', '.join(evals)}: an evaluation setting, not a training option; evaluate the run "
                             f"with it instead (cl-peft evaluate --eval {evals[0]}=..., or "
                             f"cl_peft_lib.loop.evaluate_run): it never retrains")
        bad = sorted(set(d) - valid)
        if bad:
            raise ValueError(f"unknown option(s) {bad} for {cls.__name__}; valid: {sorted(valid)}")
        return cls(**d)


@dataclass
class TaskContext:
    """What ``end_task`` may use: the task's data as preprocessed batches on the device.

    Attributes:
        task: the :class:`~cl_peft_lib.data.scenarios.Task` just trained.
        device: the training device.
        batches: ``batches(dataset)`` yields ``(x, y)`` model-ready batches (no shuffling).
        autocast: context manager factory for mixed precision.
        seed: the run's seed (for k-means and the like).
    """

    task: Any
    device: torch.device
    batches: Callable[[Any], Iterator[tuple[torch.Tensor, torch.Tensor]]]
    autocast: Callable[[], Any]
    seed: int = 0


class ContinualMethod(nn.Module):
    """Base class: a backbone, a classifier over the scenario's label space, lifecycle hooks.

    Subclasses set ``name``, ``config_cls``, ``scenario_kinds`` and override the hooks
    they need. By default the backbone is frozen (``freeze_backbone = True``) and
    a linear head over all classes is trained.

    Args:
        backbone: a timm ``VisionTransformer`` with ``num_classes=0`` (see :mod:`cl_peft_lib.backbones`).
        kind: ``"class"`` or ``"domain"``.
        num_classes: size of the scenario's label space.
        num_tasks: number of tasks in the scenario.
        config: the method's config (a :class:`MethodConfig` subclass).
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type[MethodConfig]] = MethodConfig
    scenario_kinds: ClassVar[tuple[str, ...]] = ("class", "domain")
    freeze_backbone: ClassVar[bool] = True
    #: Train on the union of all tasks seen so far (the joint upper bound).
    cumulative: ClassVar[bool] = False
    #: The method predicts a task identity at test time (its accuracy is reported).
    identifies_tasks: ClassVar[bool] = False

    def __init__(self, backbone: nn.Module, kind: str, num_classes: int, num_tasks: int, config: MethodConfig) -> None:
        super().__init__()
        if kind not in self.scenario_kinds:
            raise ValueError(f"method '{self.name}' serves {'/'.join(self.scenario_kinds)}-incremental scenarios, "
                             f"not {kind}-incremental ones")
        self.cfg = config
        self.kind = kind
        self.num_classes = num_classes
        self.num_tasks = num_tasks
        self.backbone = backbone
        self.embed_dim = backbone.num_features
        self._pretrained_ids = {id(p) for p in backbone.parameters()}
        if self.freeze_backbone:
            backbone.requires_grad_(False)
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.register_buffer("current", torch.zeros(num_classes, dtype=torch.bool))
        self.task_id = -1
        self.last_task_ids: torch.Tensor | None = None
        self.eval_cfg: EvalConfig = DEFAULT_EVAL

    # ---------------------------------------------------------------- lifecycle hooks
    def begin_task(self, task_id: int, classes: list[int]) -> None:
        """Called before training task ``task_id`` (also replayed when resuming)."""
        self.task_id = task_id
        self.current.zero_()
        self.current[classes] = True
        self.seen[classes] = True

    def end_task(self, task_id: int, ctx: TaskContext) -> None:
        """Called after training task ``task_id`` (before evaluation)."""

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the optimizer updates in the current task."""
        return [p for p in self.parameters() if p.requires_grad]

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups (override for per-group learning rates)."""
        return [{"params": self.trainable_parameters()}]

    def train(self, mode: bool = True) -> "ContinualMethod":
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    # ---------------------------------------------------------------- computation
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled (pre-logits) backbone features, shape ``(B, D)``."""
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time logits over the whole label space, shape ``(B, C)``."""
        raise NotImplementedError

    def observe(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
        """Loss on one training batch (the loop does backward and the optimizer step), and logs: detached
        0-d tensors (the loop turns them into floats at the end of the task, without a sync per step) or floats."""
        logits = self(x)
        loss = F.cross_entropy(self.mask_train_logits(logits), y)
        return loss, {}

    def mask_train_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Class-incremental with ``train_mask``: logits outside the current task set to -inf."""
        if self.kind == "class" and getattr(self.cfg, "train_mask", False):
            return logits.masked_fill(~self.current, float("-inf"))
        return logits

    def set_eval(self, cfg: EvalConfig) -> None:
        """Score under evaluation settings ``cfg`` from now on (the loop sets them around each evaluation)."""
        self.eval_cfg = cfg

    def mask_test_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """With the ``mask_unseen`` evaluation setting, classes not seen so far are -inf (the references
        score all logits, the default)."""
        return logits.masked_fill(~self.seen, float("-inf")) if self.eval_cfg.mask_unseen else logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, task_id: int | None = None) -> torch.Tensor:
        """Test-time logits over the whole label space (no task identity is given).

        Args:
            x: model-ready batch.
            task_id: the true task, used only under the ``oracle_task_id`` evaluation setting.
        """
        return self.mask_test_logits(self(x).float())

    def extra_metrics(self) -> dict[str, Any]:
        """Method-specific numbers for the results JSON (e.g. prompt-selection histograms)."""
        return {}

    # ---------------------------------------------------------------- checkpoints
    def num_trainable(self) -> int:
        """Parameters the method learns over the whole stream (including modules of past tasks
        that are frozen now), i.e. everything but the frozen pretrained weights."""
        return sum(p.numel() for p in self.parameters() if id(p) not in self._pretrained_ids or p.requires_grad)

    def _frozen_pretrained_names(self) -> set[str]:
        return {n for n, p in self.named_parameters(remove_duplicate=False)
                if id(p) in self._pretrained_ids and not p.requires_grad}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything but the frozen pretrained weights (those are checked by fingerprint instead)."""
        skip = self._frozen_pretrained_names()
        return {k: v for k, v in self.state_dict().items() if k not in skip}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`checkpoint_state`; refuses states of another architecture."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = set(missing) - self._frozen_pretrained_names()
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match method '{self.name}': missing {sorted(missing)[:5]}, "
                             f"unexpected {sorted(unexpected)[:5]}")
