"""The Lightning callback's former module: ``mechmon.integrations.lightning`` (kept so old imports work)."""

from mechmon.integrations.lightning import MechMonitor

__all__ = ["MechMonitor"]
