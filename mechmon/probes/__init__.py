"""Stateful probes, one per file, wrapping :mod:`mechmon.functional`."""

from mechmon.probes.induction import InductionProbe
from mechmon.probes.logits import LogitsProbe

__all__ = ["InductionProbe", "LogitsProbe"]
