"""The framework-free monitoring engine: :class:`Monitor`, the step record, probe forwards, publishing."""

from mechmon.engine.config import MonitorConfig
from mechmon.engine.forward import evaluate, snapshot_forward
from mechmon.engine.monitor import Monitor
from mechmon.engine.publish import Publisher
from mechmon.engine.record import StepRecord, to_host
from mechmon.engine.stream import model_inputs

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
