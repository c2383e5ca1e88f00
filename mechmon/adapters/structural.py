"""Any decoder module with no adapter: nanoGPT, LitGPT, hand-written models, found by their structure.

The layout comes from :func:`~mechmon.adapters.discover.find_layout`. Attention patterns come from the SDPA tap of
:mod:`mechmon.capture` (the probe forward recomputes them from each ``scaled_dot_product_attention`` call), or from
an attention module that returns ``(output, probabilities)``. Logits are the head's output over every position; a
model that applies its head to the last position only when no targets are given (nanoGPT) gets
``head(final_norm(h))`` over all positions instead.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Block(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
    ...     def forward(self, x):
    ...         return x + self.attn(x, x, x, need_weights=False)[0]
    >>> class Tiny(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.blocks = nn.Embedding(16, 8), nn.ModuleList([Block(), Block()])
    ...         self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 16)
    ...     def forward(self, ids):
    ...         x = self.emb(ids)
    ...         for block in self.blocks:
    ...             x = block(x)
    ...         return self.head(self.norm(x))
    >>> StructuralAdapter(Tiny()).layout.attention
    ('blocks.0.attn', 'blocks.1.attn')
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from mechmon.adapters.base import (
    FINAL_NORM,
    LOGITS,
    Adapter,
    HookPoint,
    context_length,
    first_output,
    pattern_name,
    resid_name,
    row_stats_name,
)
from mechmon.adapters.discover import Layout, find_layout
from mechmon.adapters.tap import attention_tap, enter_attention, read_attention

__all__ = ["StructuralAdapter"]

_HEAD_ATTRS = ("n_head", "n_heads", "num_heads", "num_attention_heads", "nheads")


class StructuralAdapter(Adapter):
    """Adapter for a decoder module found by structure (see the module docstring).

    Args:
        model: the module holding the blocks and the head.
        layout: its layout; found with :func:`find_layout` when ``None``.
        headless: accept a module without an output head (a pipeline stage before the last): no ``logits`` and no
            final norm are offered, ``vocab_size`` is 0.

    Raises:
        RuntimeError: if ``model`` has no block list with attention (or, unless ``headless``, no output head); when
            ``n_heads`` is first read, if the attention neither returns probabilities nor calls
            ``scaled_dot_product_attention``.
    """

    family: ClassVar[str] = "module"

    def __init__(self, model: nn.Module, layout: Layout | None = None, headless: bool = False) -> None:
        super().__init__(model)
        layout = layout or find_layout(model)
        if layout is None or (layout.head is None and not headless):
            raise RuntimeError(f"{type(model).__name__} has no block list with attention and an output head")
        if layout.head is None:
            layout = Layout(layout.blocks, layout.attention, None, None, layout.routers, layout.keys)
        self.layout = layout
        self.n_layers = layout.n_layers
        head = model.get_submodule(layout.head) if layout.head is not None else None
        self.vocab_size = int(getattr(head, "out_features", 0) or getattr(head, "num_embeddings", 0))
        self.max_positions = context_length(model)
        self._heads: int | None = None

    @property
    def n_heads(self) -> int:  # type: ignore[override]
        """Heads per block: the attention module's own attribute, else read from one two-token probe forward."""
        if self._heads is None:
            attention = self.model.get_submodule(self.layout.attention[0])
            declared = next(
                (getattr(attention, a) for a in _HEAD_ATTRS if isinstance(getattr(attention, a, None), int)), None
            )
            self._heads = int(declared) if declared else self._heads_from_forward()
        return self._heads

    def _heads_from_forward(self) -> int:
        attention = self.model.get_submodule(self.layout.attention[0])
        seen: list[Tensor] = []
        device = next(self.model.parameters()).device
        handles = [
            attention.register_forward_pre_hook(enter_attention),
            attention.register_forward_hook(lambda m, a, out: seen.append(read_attention(m, out))),
        ]
        try:
            with torch.no_grad(), attention_tap():
                self.model(torch.zeros((1, 2), dtype=torch.long, device=device))
        finally:
            for handle in handles:
                handle.remove()
        return int(seen[0].shape[1])

    def hook_points(self) -> dict[str, HookPoint]:
        """Patterns, residual stream after each block, final norm (when found) and logits."""
        get, layout = self.model.get_submodule, self.layout
        points = {LOGITS: HookPoint(get(layout.head))} if layout.head is not None else {}
        if layout.final_norm is not None:
            points[FINAL_NORM] = HookPoint(get(layout.final_norm))
        for i, attention in enumerate(layout.attention):
            points[pattern_name(i)] = HookPoint(get(attention), attention=True)
            points[row_stats_name(i)] = HookPoint(get(attention), attention=True, stats=True)
            points[resid_name(i)] = HookPoint(get(layout.block(i)))
        return points

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` at every position: the head's output, or ``head(final_norm)`` when it saw fewer."""
        get, layout = self.model.get_submodule, self.layout
        seen: dict[str, Tensor] = {}
        parts = {"head": layout.head, "norm": layout.final_norm}
        handles = [
            get(path).register_forward_hook(lambda m, a, out, key=key: seen.__setitem__(key, first_output(out)))
            for key, path in parts.items()
            if path is not None
        ]
        try:
            self.model(input_ids)
        finally:
            for handle in handles:
                handle.remove()
        logits = seen.get("head")
        if logits is not None and tuple(logits.shape[:2]) == tuple(input_ids.shape[:2]):  # ids, or a stage's input
            return logits
        if "norm" not in seen:
            shape = None if logits is None else tuple(logits.shape)
            raise RuntimeError(
                f"{type(self.model).__name__}'s head saw {shape} for input {tuple(input_ids.shape[:2])} and no final "
                "norm was found to recompute every position"
            )
        return get(layout.head)(seen["norm"])
