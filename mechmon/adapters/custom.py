"""Adapter for a user's own module, configured by a name -> submodule-path mapping.

Example:
    >>> import torch
    >>> from torch import nn
    >>> class Tiny(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.emb, self.head = nn.Embedding(16, 8), nn.Linear(8, 16)
    ...     def forward(self, ids):
    ...         return self.head(self.emb(ids))
    >>> adapter = ModuleAdapter(Tiny(), {"logits": "head"}, n_layers=0, n_heads=0, vocab_size=16)
    >>> sorted(adapter.hook_points())
    ['logits']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from mechmon.adapters.base import CANONICAL_HELP, CANONICAL_RE, Adapter, HookPoint, first_output
from mechmon.checks import fail, integer

__all__ = ["ModuleAdapter"]

PointSpec = str | tuple[str, Callable[[Any], Tensor]]


class ModuleAdapter(Adapter):
    """Map canonical names to submodule paths of any ``nn.Module``.

    Args:
        model: the module to watch.
        points: canonical name -> submodule path, or (path, extract) where ``extract(output)`` returns the tensor.
            A pattern name mapped to a bare path reads the attention module's probabilities ``[B, H, Q, K]``: its
            second output when it returns them, else recomputed from its ``scaled_dot_product_attention`` call in
            the probe forward. An ``extract`` must return probabilities ``[B, H, Q, K]``.
        n_layers: number of transformer blocks.
        n_heads: attention heads per block.
        vocab_size: output vocabulary size.
        bos_token_id: BOS id prepended to probe batches, or ``None``.
        forward: optional ``fn(model, input_ids) -> logits``; defaults to ``model(input_ids)``.
        n_experts: experts per MoE layer, for a custom MoE (map ``blocks.{l}.mlp.hook_router_logits`` ``[B·T, E]``
            and ``blocks.{l}.mlp.hook_expert_indices`` ``[B·T, k]`` to the router module, with an ``extract``).
        top_k: experts selected per token.

    Raises:
        TypeError, ValueError: on arguments of the wrong type or value, or a name that is not canonical.
        RuntimeError: if a path does not exist (listing the module's submodules).
    """

    family: ClassVar[str] = "custom"

    def __init__(
        self,
        model: nn.Module,
        points: Mapping[str, PointSpec],
        n_layers: int,
        n_heads: int,
        vocab_size: int,
        bos_token_id: int | None = None,
        forward: Callable[[nn.Module, Tensor], Tensor] | None = None,
        n_experts: int = 0,
        top_k: int = 0,
    ) -> None:
        super().__init__(model)
        for arg, value, low in [("n_layers", n_layers, 0), ("n_heads", n_heads, 0), ("vocab_size", vocab_size, 1)]:
            integer("ModuleAdapter", arg, value, low)
        integer("ModuleAdapter", "n_experts", n_experts, 0)
        integer("ModuleAdapter", "top_k", top_k, 0)
        if bos_token_id is not None:
            integer("ModuleAdapter", "bos_token_id", bos_token_id, 0)
        if forward is not None and not callable(forward):
            fail("ModuleAdapter", "forward", forward, "a callable (model, input_ids) -> logits, or None", TypeError)
        if not isinstance(points, Mapping) or not points:
            fail(
                "ModuleAdapter",
                "points",
                points,
                "a non-empty mapping of canonical names to submodule paths",
                TypeError,
            )
        unknown = [name for name in points if not isinstance(name, str) or not CANONICAL_RE.match(name)]
        if unknown:
            fail("ModuleAdapter", "points", unknown, f"canonical capture names ({CANONICAL_HELP})")
        self.n_layers, self.n_heads, self.vocab_size, self.bos_token_id = n_layers, n_heads, vocab_size, bos_token_id
        self.n_experts, self.top_k = n_experts, top_k
        self._forward = forward
        self._points = {name: self._resolve(name, spec) for name, spec in points.items()}

    def _resolve(self, name: str, spec: PointSpec) -> HookPoint:
        path, extract = (spec, first_output) if isinstance(spec, str) else spec
        attention = isinstance(spec, str) and name.endswith("attn.hook_pattern")
        try:
            return HookPoint(self.model.get_submodule(path), extract, attention=attention)
        except AttributeError as err:
            names = [n for n, _ in self.model.named_modules() if n][:40]
            raise RuntimeError(f"ModuleAdapter: no submodule {path!r}; the model has: {names}") from err

    def hook_points(self) -> dict[str, HookPoint]:
        """The configured points."""
        return dict(self._points)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits from the user's ``forward`` or ``model(input_ids)``."""
        if self._forward is not None:
            return self._forward(self.model, input_ids)
        return super().forward(input_ids)
