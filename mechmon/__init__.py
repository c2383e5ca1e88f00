"""mechmon: live mechanistic monitoring of transformer training (any loop: Lightning, Fabric, HF Trainer, plain).

Names are imported on first use (PEP 562), so ``mechmon --help`` and ``import mechmon.cli`` do not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mechmon.probes import PROBES

_WHERE = {
    "Adapter": "mechmon.adapters",
    "HFAdapter": "mechmon.adapters",
    "HookPoint": "mechmon.adapters",
    "ModuleAdapter": "mechmon.adapters",
    "StructuralAdapter": "mechmon.adapters",
    "TransformerLensAdapter": "mechmon.adapters",
    "resolve_adapter": "mechmon.adapters",
    "Alert": "mechmon.alerts",
    "Collapse": "mechmon.alerts",
    "Compound": "mechmon.alerts",
    "Emergence": "mechmon.alerts",
    "NonFinite": "mechmon.alerts",
    "Phase": "mechmon.alerts",
    "Plateau": "mechmon.alerts",
    "Rule": "mechmon.alerts",
    "Threshold": "mechmon.alerts",
    "Trend": "mechmon.alerts",
    "MechMonitor": "mechmon.integrations.lightning",
    "capture": "mechmon.capture",
    "Monitor": "mechmon.engine",
    "evaluate": "mechmon.engine",
    "snapshot_forward": "mechmon.engine",
    "KEY_RE": "mechmon.naming",
    "metric_key": "mechmon.naming",
    "Probe": "mechmon.probe",
    "SnapshotProbe": "mechmon.probe",
    "StreamingProbe": "mechmon.probe",
    "get_probe": "mechmon.registry",
    "list_probes": "mechmon.registry",
    "register_probe": "mechmon.registry",
    "at": "mechmon.schedule",
    "every": "mechmon.schedule",
    "log_spaced": "mechmon.schedule",
    "union": "mechmon.schedule",
}

_WHERE.update(dict.fromkeys(PROBES, "mechmon.probes"))  # the probe catalogue

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from mechmon.adapters import (  # noqa: F401
        Adapter,
        HFAdapter,
        HookPoint,
        ModuleAdapter,
        StructuralAdapter,
        TransformerLensAdapter,
        resolve_adapter,
    )
    from mechmon.alerts import Alert, Collapse, Compound, Emergence, NonFinite, Phase, Plateau, Rule, Threshold, Trend  # noqa: F401
    from mechmon.capture import capture  # noqa: F401
    from mechmon.engine import Monitor, evaluate, snapshot_forward  # noqa: F401
    from mechmon.integrations.lightning import MechMonitor  # noqa: F401
    from mechmon.naming import KEY_RE, metric_key  # noqa: F401
    from mechmon.probe import Probe, SnapshotProbe, StreamingProbe  # noqa: F401
    from mechmon.probes import *  # noqa: F403 (the catalogue)
    from mechmon.registry import get_probe, list_probes, register_probe  # noqa: F401
    from mechmon.schedule import at, every, log_spaced, union  # noqa: F401


__version__ = "0.1.0"

__all__ = [*_WHERE, "__version__"]  # the public names are those _WHERE maps


def __getattr__(name: str) -> Any:
    """Import a public name (or a submodule such as ``mechmon.adapters``) on first use."""
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'mechmon' has no attribute {name!r}") from None
    else:
        raise AttributeError(name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
