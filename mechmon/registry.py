"""Probe registry: ``@register_probe`` fills a name -> class dict; no string ``eval`` dispatch."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mechmon.probe import Probe

__all__ = ["register_probe", "get_probe", "list_probes"]

_REGISTRY: dict[str, type[Probe]] = {}
P = TypeVar("P", bound="type[Probe]")


def register_probe(cls: P) -> P:
    """Class decorator that registers a probe under its ``name``.

    Raises:
        ValueError: if another class already holds the name.
    """
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"probe name {name!r} is already registered by {_REGISTRY[name].__qualname__}")
    _REGISTRY[name] = cls
    return cls


def _builtin() -> None:
    """Register mechmon's own probes (their modules register on import; ``mechmon`` imports lazily)."""
    import mechmon.probes  # noqa: F401


def get_probe(name: str) -> type[Probe]:
    """Return the probe class registered as ``name``.

    Raises:
        KeyError: with the registered names, if ``name`` is unknown.
    """
    _builtin()
    if name not in _REGISTRY:
        raise KeyError(f"no probe named {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_probes(pattern: str = "*") -> list[str]:
    """Sorted names of the registered probes matching a glob ``pattern``."""
    _builtin()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
