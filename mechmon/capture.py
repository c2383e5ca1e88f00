"""``capture()``: forward hooks that live only inside a context manager and are always removed.

Attention patterns come from an attention module's own output when it returns its probabilities (HF eager
attention returns ``(output, weights)``), and otherwise from :func:`attention_tap`: inside a probe forward every
``torch.nn.functional.scaled_dot_product_attention`` call is intercepted and its probabilities are recomputed from
that call's own q, k, mask, scale and causal flag, attributed to the attention module that made the call.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator

from torch import Tensor, nn

from mechmon.adapters.base import Adapter, HookPoint
from mechmon.adapters.tap import AttentionTap, active_tap, attention_tap, enter_attention, read_attention

__all__ = ["capture", "resolve_names", "attention_tap", "AttentionTap"]

Reducer = Callable[[str, Tensor], Tensor]


def resolve_names(adapter: Adapter, patterns: Iterable[str]) -> list[str]:
    """Expand glob patterns over the adapter's canonical names.

    Raises:
        RuntimeError: if a pattern matches nothing; the message lists the names that exist.
    """
    available = adapter.names()
    names: list[str] = []
    for pattern in patterns:
        hits = [n for n in available if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise RuntimeError(f"{adapter!r} offers no capture named {pattern!r}; it has: {available}")
        names += [h for h in hits if h not in names]
    return names


def _read(point: HookPoint, module: nn.Module, output: object) -> Tensor:
    return read_attention(module, output, point.stats) if point.attention else point.extract(output)


@contextlib.contextmanager
def capture(
    adapter: Adapter,
    names: Iterable[str],
    reduce: Reducer | None = None,
    errors: dict[str, Exception] | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Hook exactly ``names`` for the duration of the block; yields name -> detached tensor.

    Each hook stores ``reduce(name, tensor.detach())`` (identity by default), so big activations can be shrunk
    inside the hook. If a module runs several times, the last call wins. The ``finally`` removes exactly the
    handles this call registered, also on exceptions.

    Args:
        adapter: the model's adapter.
        names: canonical names (no globs; see :func:`resolve_names`).
        reduce: optional ``fn(name, tensor) -> tensor`` applied in the hook.
        errors: when given (hooks inside a training forward), a hook that fails stores its exception here under its
            name instead of raising into the model's forward.

    Raises:
        RuntimeError: if a name is not offered by the adapter.
    """
    points = adapter.hook_points()
    caps: dict[str, Tensor] = {}
    handles = []

    def make_hook(name: str, point: HookPoint) -> Callable:
        def hook(module: nn.Module, args: object, output: object) -> None:
            try:
                tensor = adapter.whole(name, _read(point, module, output).detach())
                caps[name] = reduce(name, tensor) if reduce is not None else tensor
            except Exception as err:
                if errors is None:
                    raise
                errors.setdefault(name, err)  # caveat: never raise into the user's training forward

        return hook

    staged = adapter.pipeline_stages > 1
    elsewhere = set(adapter.names()) - set(points) if staged else set()  # another stage's layers: it captures them
    try:
        for name in names:
            if name in elsewhere:
                continue
            if name not in points:
                raise RuntimeError(f"{adapter!r} offers no capture named {name!r}; it has: {list(points)}")
            point = points[name]
            if point.attention and active_tap() is not None:  # probe forwards only: SDPA calls are attributed
                handles.append(point.module.register_forward_pre_hook(enter_attention))
            handles.append(point.module.register_forward_hook(make_hook(name, point)))
        with adapter.collecting(caps):
            yield caps
    finally:
        for handle in handles:
            handle.remove()
