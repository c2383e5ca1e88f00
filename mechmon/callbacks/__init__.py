"""The Lightning callback's former home: ``mechmon.integrations.lightning`` (kept so old imports work)."""

from mechmon.integrations.lightning import MechMonitor

__all__ = ["MechMonitor"]
