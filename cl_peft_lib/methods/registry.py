"""The method registry: every continual-learning method of the book, by name.

A method family registers its classes with :func:`register_method` when its module is
imported (``cl_peft_lib.methods`` imports them all); the loop, the CLI and the grid look
names up with :func:`get_method_class`. This module imports only :mod:`.base`, so a
family can import it without meeting a half-initialised package.

Chapter: README (``methods/registry.py``).
"""
from __future__ import annotations

from .base import ContinualMethod, MethodConfig

#: name -> method class, in registration order (``cl-peft list`` prints this order).
METHODS: dict[str, type[ContinualMethod]] = {}


def register_method(cls: type[ContinualMethod]) -> type[ContinualMethod]:
    """Class decorator adding ``cls`` to :data:`METHODS` under ``cls.name``.

    Raises:
        TypeError: ``cls`` is not a :class:`ContinualMethod` with a :class:`MethodConfig` subclass
            as ``config_cls``.
        ValueError: another class (not a re-definition of the same one) already holds the name.
    """
    if not (isinstance(cls, type) and issubclass(cls, ContinualMethod)):
        raise TypeError(f"register_method expects a ContinualMethod subclass, got {cls!r}")
    if not (isinstance(cls.config_cls, type) and issubclass(cls.config_cls, MethodConfig)):
        raise TypeError(f"{cls.__name__}.config_cls must be a MethodConfig subclass, got {cls.config_cls!r}")
    name = cls.name
    if not name or name == ContinualMethod.name:
        raise ValueError(f"{cls.__name__} needs its own class attribute `name` to be registered")
    old = METHODS.get(name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method name '{name}' is already registered by {old.__module__}.{old.__qualname__}; "
                         f"give {cls.__name__} another `name`")
    METHODS[name] = cls
    return cls


def get_method_class(name: str) -> type[ContinualMethod]:
    """The method class registered as ``name`` (a ``KeyError`` listing the valid names otherwise)."""
    if name not in METHODS:
        raise KeyError(f"unknown method '{name}'; valid: {', '.join(sorted(METHODS))}")
    return METHODS[name]
