"""The SDPA tap: attention probabilities of modules that never materialise them, recomputed in probe forwards.

Inside :func:`attention_tap` every ``torch.nn.functional.scaled_dot_product_attention`` call made while an attention
module being read is running records that call's arguments, attributed to that module: a forward pre-hook
(:func:`enter_attention`) marks the module, its forward hook (:func:`read_attention`) turns the call into what the
capture asks for, the probabilities (:func:`~mechmon.functional.attention.sdpa_probabilities`) or the per-row
logit statistics (:func:`~mechmon.functional.attention.sdpa_row_stats`), and drops it. Training forwards never run
under the tap.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.functional.attention import probability_row_stats, sdpa_probabilities, sdpa_row_stats

__all__ = ["AttentionTap", "attention_tap", "active_tap", "attention_weights", "enter_attention", "read_attention"]

_SDPA = torch.nn.functional.scaled_dot_product_attention
_LOCAL = threading.local()


class AttentionTap:
    """Records the arguments of the SDPA call made inside each attention module being captured (the last one wins)."""

    def __init__(self) -> None:
        self.stack: list[nn.Module] = []
        self.calls: dict[int, tuple[tuple, dict]] = {}


def active_tap() -> AttentionTap | None:
    """This thread's tap, or ``None`` outside :func:`attention_tap`."""
    return getattr(_LOCAL, "tap", None)


def _tapped_sdpa(*args: Any, **kwargs: Any) -> Tensor:
    tap = active_tap()
    if tap is not None and tap.stack:
        tap.calls[id(tap.stack[-1])] = (args, kwargs)
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


def attention_weights(output: Any, call: tuple[tuple, dict] | None = None, stats: bool = False) -> Tensor:
    """The pattern ``[B, H, Q, K]`` or the row statistics ``[B, H, Q, 4]`` of an attention module that just ran.

    Patterns come from the probabilities it returned (``output[1]``), else from its recorded SDPA ``call``; row
    statistics need the logits, so only from the call, or from logits the module returned as ``output[1]`` when
    they are scores (TransformerLens ``hook_attn_scores`` is read by its adapter, not here).

    Raises:
        RuntimeError: if what is asked for cannot be read (no probabilities returned and no SDPA call recorded).
    """
    weights = output[1] if isinstance(output, (tuple, list)) and len(output) > 1 else None
    if call is not None:
        return (sdpa_row_stats if stats else sdpa_probabilities)(*call[0], **call[1])
    if isinstance(weights, Tensor) and weights.ndim == 4:
        if not stats:
            return weights
        warnings.warn(
            "mechmon: an attention module made no scaled_dot_product_attention call and returned only probabilities: "
            "its max attention logit cannot be measured (NaN); entropy and sink statistics come from the probabilities",
            stacklevel=2,
        )
        return probability_row_stats(weights)
    if stats:
        raise RuntimeError(
            "the attention module called no scaled_dot_product_attention inside the probe forward, so its logits "
            "(q and k) cannot be read: run it with SDPA attention (HF: attn_implementation='sdpa'; the probe forward "
            "switches to it when the model supports it)"
        )
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


def read_attention(module: nn.Module, output: object, stats: bool = False) -> Tensor:
    """The pattern ``[B, H, Q, K]`` (or, with ``stats``, row statistics ``[B, H, Q, 4]``) of a module that just ran."""
    tap = active_tap()
    call = None
    if tap is not None and tap.stack and tap.stack[-1] is module:
        tap.stack.pop()
        call = tap.calls.pop(id(module), None)
    return attention_weights(output, call, stats)
