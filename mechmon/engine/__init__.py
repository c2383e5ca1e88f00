"""The framework-free monitoring engine: :class:`Monitor`, the step record, probe forwards, publishing."""

from mechmon.engine.config import MonitorConfig
from mechmon.engine.forward import evaluate, snapshot_forward
from mechmon.engine.monitor import Monitor, model_inputs
from mechmon.engine.publish import Publisher
from mechmon.engine.record import StepRecord, to_host

__all__ = [
    "Monitor",
    "MonitorConfig",
    "Publisher",
    "StepRecord",
    "evaluate",
    "snapshot_forward",
    "to_host",
    "model_inputs",
]
