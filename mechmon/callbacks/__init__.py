"""Lightning callbacks."""

from mechmon.callbacks.monitor import MechMonitor

__all__ = ["MechMonitor"]
