"""Stateful probes, one per file, wrapping :mod:`mechmon.functional`; ``PROBES`` is their catalogue.

A probe is added by one line in ``PROBES`` (and its import in the ``TYPE_CHECKING`` block below, for editors):
``from mechmon import <Class>``, ``mechmon.get_probe(<name>)`` and ``mechmon probes`` read the catalogue. Classes
are imported on first use (PEP 562), so reading the catalogue imports no probe and no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

PROBES = {  # class name -> its module in mechmon/probes
    "AttentionProgressProbe": "apm",
    "AttentionEntropyProbe": "attn_entropy",
    "AttentionLogitProbe": "attn_logits",
    "AttentionSinkProbe": "attn_sink",
    "CollapseProbe": "collapse",
    "ICLProbe": "icl",
    "InductionProbe": "induction",
    "LogitsProbe": "logits",
    "MassiveActivationProbe": "massive",
    "NLMProbe": "nlm",
    "PathwayProbe": "pathway",
    "PrefixMatchingProbe": "prefix_match",
    "RankProbe": "rank",
    "RepetitionProbe": "repetition",
    "RoutingProbe": "routing",
    "WeightsProbe": "weights",
}

__all__ = ["PROBES", *PROBES]


def __getattr__(name: str) -> Any:
    """Import a probe class of the catalogue on first use."""
    if name in PROBES:
        return getattr(importlib.import_module(f"mechmon.probes.{PROBES[name]}"), name)
    raise AttributeError(f"module 'mechmon.probes' has no attribute {name!r}")


if TYPE_CHECKING:  # the same classes, eagerly, for type checkers (tests/test_catalogue.py: the same names)
    from mechmon.probes.apm import AttentionProgressProbe  # noqa: F401
    from mechmon.probes.attn_entropy import AttentionEntropyProbe  # noqa: F401
    from mechmon.probes.attn_logits import AttentionLogitProbe  # noqa: F401
    from mechmon.probes.attn_sink import AttentionSinkProbe  # noqa: F401
    from mechmon.probes.collapse import CollapseProbe  # noqa: F401
    from mechmon.probes.icl import ICLProbe  # noqa: F401
    from mechmon.probes.induction import InductionProbe  # noqa: F401
    from mechmon.probes.logits import LogitsProbe  # noqa: F401
    from mechmon.probes.massive import MassiveActivationProbe  # noqa: F401
    from mechmon.probes.nlm import NLMProbe  # noqa: F401
    from mechmon.probes.pathway import PathwayProbe  # noqa: F401
    from mechmon.probes.prefix_match import PrefixMatchingProbe  # noqa: F401
    from mechmon.probes.rank import RankProbe  # noqa: F401
    from mechmon.probes.repetition import RepetitionProbe  # noqa: F401
    from mechmon.probes.routing import RoutingProbe  # noqa: F401
    from mechmon.probes.weights import WeightsProbe  # noqa: F401
