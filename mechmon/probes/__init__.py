"""Stateful probes, one per file, wrapping :mod:`mechmon.functional`."""

from mechmon.probes.induction import InductionProbe
from mechmon.probes.logits import LogitsProbe
from mechmon.probes.nlm import NLMProbe
from mechmon.probes.weights import WeightsProbe

__all__ = ["InductionProbe", "LogitsProbe", "NLMProbe", "WeightsProbe"]
