"""The HF ``Trainer`` callback's former module: ``mechmon.integrations.hf`` (kept so old imports work)."""

from mechmon.integrations.hf import STATE_FILE, MechMonitorCallback

__all__ = ["MechMonitorCallback", "STATE_FILE"]
