"""Method registry: every continual-learning method of the book, by name.

Chapter: ``notebooks/01_continual_learning.ipynb`` (the methods interface).
"""
from __future__ import annotations

from .base import ContinualMethod, MethodConfig, TaskContext
from .baselines import NCM, Finetune, Joint, LinearProbe

METHODS: dict[str, type[ContinualMethod]] = {}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    """Class decorator adding ``cls`` to :data:`METHODS` under ``cls.name``."""
    METHODS[cls.name] = cls
    return cls


for _cls in (Finetune, LinearProbe, Joint, NCM):
    register_method(_cls)


def get_method_class(name: str) -> type[ContinualMethod]:
    """The method class registered as ``name`` (clear error listing valid names)."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]


__all__ = ["ContinualMethod", "MethodConfig", "TaskContext", "METHODS", "register_method", "get_method_class"]

# Method families register themselves on import.
from . import lora, prompts  # noqa: E402,F401
