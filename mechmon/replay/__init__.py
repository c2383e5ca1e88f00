"""Replay: the monitor's probes over saved checkpoints (``mechmon scan``)."""

from mechmon.replay.checkpoints import Checkpoint, find_checkpoints, load_weights
from mechmon.replay.scan import ScanResult, scan

__all__ = ["Checkpoint", "ScanResult", "find_checkpoints", "load_weights", "scan"]
