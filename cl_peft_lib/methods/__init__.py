"""Every continual-learning method of the book, registered by name.

``METHODS``, ``register_method`` and ``get_method_class`` live in :mod:`.registry`;
importing this package imports every family, each registering its methods.

Chapter: ``notebooks/03_prompt_tuning.ipynb`` (the methods by name).
"""
from __future__ import annotations

from .base import ContinualMethod, MethodConfig, TaskContext
from .registry import METHODS, get_method_class, register_method
from .baselines import NCM, Finetune, Joint, LinearProbe

for _cls in (Finetune, LinearProbe, Joint, NCM):
    register_method(_cls)

from . import lora, prompts  # noqa: E402,F401  (the PEFT families register themselves on import)
from . import inflora  # noqa: E402,F401  (InfLoRA)
from . import sdlora  # noqa: E402,F401  (SD-LoRA)
from . import ranpac  # noqa: E402,F401  (RanPAC)
from . import coda  # noqa: E402,F401  (CODA-Prompt)

__all__ = ["ContinualMethod", "MethodConfig", "TaskContext", "METHODS", "register_method", "get_method_class"]
