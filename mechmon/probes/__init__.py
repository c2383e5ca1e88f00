"""Stateful probes, one per file, wrapping :mod:`mechmon.functional`."""

from mechmon.probes.apm import AttentionProgressProbe
from mechmon.probes.attn_entropy import AttentionEntropyProbe
from mechmon.probes.attn_logits import AttentionLogitProbe
from mechmon.probes.attn_sink import AttentionSinkProbe
from mechmon.probes.collapse import CollapseProbe
from mechmon.probes.icl import ICLProbe
from mechmon.probes.induction import InductionProbe
from mechmon.probes.logits import LogitsProbe
from mechmon.probes.massive import MassiveActivationProbe
from mechmon.probes.nlm import NLMProbe
from mechmon.probes.pathway import PathwayProbe
from mechmon.probes.prefix_match import PrefixMatchingProbe
from mechmon.probes.rank import RankProbe
from mechmon.probes.repetition import RepetitionProbe
from mechmon.probes.routing import RoutingProbe
from mechmon.probes.weights import WeightsProbe

__all__ = [
    "PrefixMatchingProbe",
    "ICLProbe",
    "MassiveActivationProbe",
    "AttentionSinkProbe",
    "AttentionLogitProbe",
    "AttentionEntropyProbe",
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
