"""Metric keys: the only home of mechmon's key grammar ``<namespace>/<probe>/<stat>[/<scope>]``.

``stat`` is snake_case (``_nats`` for log-probabilities, ``_frac`` for shares in [0, 1]); ``scope`` is ``L03``,
``L03H07``, ``E12``, a group or parameter slug, or ``group.L03``. Every key is listed in docs/metrics.md.
"""

from __future__ import annotations

import re

__all__ = ["KEY_RE", "metric_key", "layer_scope", "head_scope"]

_SEGMENT = r"[a-z][a-z0-9_]*"
_SCOPE = r"[A-Za-z0-9_.\-]+"
KEY_RE = re.compile(rf"^{_SEGMENT}/{_SEGMENT}/{_SEGMENT}(/{_SCOPE})?$")
_SEGMENT_RE, _SCOPE_RE = re.compile(rf"^{_SEGMENT}$"), re.compile(rf"^{_SCOPE}$")


def metric_key(probe: str, stat: str, scope: str | None = None, namespace: str = "mechmon") -> str:
    """Build a metric key and check it against :data:`KEY_RE`.

    Args:
        probe: registry name of the probe (or the metric family, e.g. ``prev_token``).
        stat: snake_case statistic name.
        scope: optional scope such as ``L03`` or ``L03H07``.
        namespace: first key segment, ``"mechmon"`` unless the monitor was given another.

    Returns:
        The key, e.g. ``"mechmon/induction/score_max/L01"``.

    Raises:
        ValueError: if the key does not match the grammar.

    Example:
        >>> metric_key("induction", "score_max", layer_scope(1))
        'mechmon/induction/score_max/L01'
    """
    key = f"{namespace}/{probe}/{stat}" + (f"/{scope}" if scope else "")
    segments_ok = all(_SEGMENT_RE.match(s) for s in (namespace, probe, stat))
    if not segments_ok or (scope and not _SCOPE_RE.match(scope)):
        raise ValueError(f"metric key {key!r} does not follow '<namespace>/<probe>/<stat>[/<scope>]' (snake_case)")
    return key


def layer_scope(layer: int) -> str:
    """Zero-padded layer scope, e.g. ``L03``."""
    return f"L{layer:02d}"


def head_scope(layer: int, head: int) -> str:
    """Zero-padded layer-and-head scope, e.g. ``L03H07``."""
    return f"L{layer:02d}H{head:02d}"
