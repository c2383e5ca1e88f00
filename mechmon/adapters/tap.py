"""The SDPA tap: attention probabilities of modules that never materialise them, recomputed in probe forwards.

Inside :func:`attention_tap` every ``torch.nn.functional.scaled_dot_product_attention`` call made while an attention
module being read is running records the probabilities of that call (:func:`~mechmon.functional.attention.
sdpa_probabilities`), attributed to that module: a forward pre-hook (:func:`enter_attention`) marks the module, its
forward hook (:func:`read_attention`) takes its pattern. Training forwards never run under the tap.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.functional.attention import sdpa_probabilities

__all__ = ["AttentionTap", "attention_tap", "active_tap", "attention_weights", "enter_attention", "read_attention"]

_SDPA = torch.nn.functional.scaled_dot_product_attention
_LOCAL = threading.local()


class AttentionTap:
    """Records the probabilities ``[B, H, Q, K]`` of each SDPA call made inside an attention module being captured."""

    def __init__(self) -> None:
        self.stack: list[nn.Module] = []
        self.probs: dict[int, Tensor] = {}


def active_tap() -> AttentionTap | None:
    """This thread's tap, or ``None`` outside :func:`attention_tap`."""
    return getattr(_LOCAL, "tap", None)


def _tapped_sdpa(*args: Any, **kwargs: Any) -> Tensor:
    tap = active_tap()
    if tap is not None and tap.stack:
        tap.probs[id(tap.stack[-1])] = sdpa_probabilities(*args, **kwargs)
    return _SDPA(*args, **kwargs)


@contextlib.contextmanager
def attention_tap() -> Iterator[AttentionTap]:
    """Intercept ``torch.nn.functional.scaled_dot_product_attention`` for the duration (probe forwards only).

    caveat: the function is swapped in ``torch.nn.functional`` (only this thread's calls are recorded), so code that
    bound it by name at import (``from torch.nn.functional import scaled_dot_product_attention``) is not seen.
    """
    tap, previous = AttentionTap(), active_tap()
    _LOCAL.tap = tap
    functional = torch.nn.functional
    functional.scaled_dot_product_attention = _tapped_sdpa
    try:
        yield tap
    finally:
        _LOCAL.tap = previous
        if previous is None:
            functional.scaled_dot_product_attention = _SDPA


def attention_weights(output: Any, recorded: Tensor | None = None) -> Tensor:
    """The probabilities an attention module returned (``output[1]``), else those recorded from its SDPA call.

    Raises:
        RuntimeError: if the module returned none and made no SDPA call inside :func:`attention_tap`.
    """
    weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    if isinstance(weights, Tensor) and weights.ndim == 4:
        return weights
    if recorded is not None:
        return recorded
    raise RuntimeError(
        "the attention module returned no probabilities and called no scaled_dot_product_attention inside the probe "
        "forward (the model is not running eager attention): switch it in Adapter.eager_attention(), or map "
        "blocks.{l}.attn.hook_pattern to a module that returns [B, H, Q, K] probabilities with a ModuleAdapter"
    )


def enter_attention(module: nn.Module, args: object) -> None:
    """Forward pre-hook: SDPA calls from now on belong to ``module``."""
    tap = active_tap()
    if tap is not None:
        tap.stack.append(module)


def read_attention(module: nn.Module, output: object) -> Tensor:
    """The pattern ``[B, H, Q, K]`` of an attention module that just ran (see :func:`attention_weights`)."""
    tap = active_tap()
    recorded = None
    if tap is not None and tap.stack and tap.stack[-1] is module:
        tap.stack.pop()
        recorded = tap.probs.pop(id(module), None)
    return attention_weights(output, recorded)
