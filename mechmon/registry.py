"""Probe registry: the catalogue's probes (:data:`mechmon.probes.PROBES`) and those ``@register_probe`` adds.

No string ``eval`` dispatch. The built-in probes do not register themselves: the registry reads the catalogue,
so no probe module imports this one.
"""

from __future__ import annotations

import fnmatch
import functools
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from mechmon.probe import Probe

__all__ = ["register_probe", "get_probe", "list_probes", "headline"]

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


@functools.cache
def _builtin() -> None:
    """Register the catalogue's probes, once (their classes are imported here, on the first lookup)."""
    import mechmon.probes as probes

    for class_name in probes.PROBES:
        register_probe(getattr(probes, class_name))


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


def headline(name: str) -> str | None:
    """The headline stat of the probe registered as ``name`` (``None`` for a name no probe holds)."""
    _builtin()
    cls = _REGISTRY.get(name)
    return getattr(cls, "headline", None) if cls is not None else None
