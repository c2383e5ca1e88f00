"""``capture()``: forward hooks that live only inside a context manager and are always removed.

Attention patterns come from an attention module's own output when it returns its probabilities (HF eager
attention returns ``(output, weights)``), and otherwise from :func:`attention_tap`: inside a probe forward every
``torch.nn.functional.scaled_dot_product_attention`` call is intercepted and its probabilities are recomputed from
that call's own q, k, mask, scale and causal flag, attributed to the attention module that made the call.
"""

from __future__ import annotations

import contextlib
import fnmatch
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter, HookPoint
from mechmon.functional.attention import sdpa_probabilities

__all__ = ["capture", "resolve_names", "attention_tap", "AttentionTap"]

Reducer = Callable[[str, Tensor], Tensor]
_SDPA = torch.nn.functional.scaled_dot_product_attention
_LOCAL = threading.local()


class AttentionTap:
    """Records the probabilities ``[B, H, Q, K]`` of each SDPA call made inside an attention module being captured."""

    def __init__(self) -> None:
        self.stack: list[nn.Module] = []
        self.probs: dict[int, Tensor] = {}


def _active_tap() -> AttentionTap | None:
    return getattr(_LOCAL, "tap", None)


def _tapped_sdpa(*args: Any, **kwargs: Any) -> Tensor:
    tap = _active_tap()
    if tap is not None and tap.stack:
        tap.probs[id(tap.stack[-1])] = sdpa_probabilities(*args, **kwargs)
    return _SDPA(*args, **kwargs)


@contextlib.contextmanager
def attention_tap() -> Iterator[AttentionTap]:
    """Intercept ``torch.nn.functional.scaled_dot_product_attention`` for the duration (probe forwards only).

    caveat: the function is swapped in ``torch.nn.functional`` (only this thread's calls are recorded), so code that
    bound it by name at import (``from torch.nn.functional import scaled_dot_product_attention``) is not seen.
    """
    tap, previous = AttentionTap(), _active_tap()
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


def resolve_names(adapter: Adapter, patterns: Iterable[str]) -> list[str]:
    """Expand glob patterns over the adapter's canonical names.

    Raises:
        RuntimeError: if a pattern matches nothing; the message lists the names that exist.
    """
    available = list(adapter.hook_points())
    names: list[str] = []
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise RuntimeError(f"{adapter!r} offers no capture named {pattern!r}; it has: {available}")
        names += [h for h in hits if h not in names]
    return names


def _enter(module: nn.Module, args: object) -> None:
    tap = _active_tap()
    if tap is not None:
        tap.stack.append(module)


def _read(point: HookPoint, module: nn.Module, output: object) -> Tensor:
    if not point.attention:
        return point.extract(output)
    tap = _active_tap()
    recorded = None
    if tap is not None and tap.stack and tap.stack[-1] is module:
        tap.stack.pop()
        recorded = tap.probs.pop(id(module), None)
    return attention_weights(output, recorded)


@contextlib.contextmanager
def capture(adapter: Adapter, names: Iterable[str], reduce: Reducer | None = None) -> Iterator[dict[str, Tensor]]:
    """Hook exactly ``names`` for the duration of the block; yields name -> detached tensor.

    Each hook stores ``reduce(name, tensor.detach())`` (identity by default), so big activations can be shrunk
    inside the hook. If a module runs several times, the last call wins. The ``finally`` removes exactly the
    handles this call registered, also on exceptions.

    Args:
        adapter: the model's adapter.
        names: canonical names (no globs; see :func:`resolve_names`).
        reduce: optional ``fn(name, tensor) -> tensor`` applied in the hook.

    Raises:
        RuntimeError: if a name is not offered by the adapter.
    """
    points = adapter.hook_points()
    caps: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str, point: HookPoint) -> Callable:
        def hook(module: nn.Module, args: object, output: object) -> None:
            tensor = _read(point, module, output).detach()
            caps[name] = reduce(name, tensor) if reduce is not None else tensor

        return hook

    try:
        for name in names:
            if name not in points:
                raise RuntimeError(f"{adapter!r} offers no capture named {name!r}; it has: {list(points)}")
            point = points[name]
            if point.attention and _active_tap() is not None:  # probe forwards only: SDPA calls are attributed
                handles.append(point.module.register_forward_pre_hook(_enter))
            handles.append(point.module.register_forward_hook(make_hook(name, point)))
        yield caps
    finally:
        for handle in handles:
            handle.remove()
