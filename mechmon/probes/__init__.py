"""Stateful probes, one per file, wrapping :mod:`mechmon.functional`."""

from mechmon.probes.apm import AttentionProgressProbe
from mechmon.probes.collapse import CollapseProbe
from mechmon.probes.induction import InductionProbe
from mechmon.probes.logits import LogitsProbe
from mechmon.probes.nlm import NLMProbe
from mechmon.probes.pathway import PathwayProbe
from mechmon.probes.rank import RankProbe
from mechmon.probes.repetition import RepetitionProbe
from mechmon.probes.routing import RoutingProbe
from mechmon.probes.weights import WeightsProbe

__all__ = [
    "AttentionProgressProbe",
    "CollapseProbe",
    "InductionProbe",
    "LogitsProbe",
    "NLMProbe",
    "PathwayProbe",
    "RankProbe",
    "RepetitionProbe",
    "RoutingProbe",
    "WeightsProbe",
]
