"""TransformerLens ``HookedTransformer`` (transformer-lens < 4): its hook points already carry canonical names.

Detected by class name, so mechmon never imports transformer-lens itself.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from mechmon.adapters.base import LOGITS, Adapter, HookPoint

__all__ = ["TransformerLensAdapter"]


def _identity(output: object) -> object:
    return output


class TransformerLensAdapter(Adapter):
    """Adapter for ``transformer_lens.HookedTransformer``; patterns come from ``blocks.{l}.attn.hook_pattern``."""

    family: ClassVar[str] = "transformer_lens"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg = model.cfg
        self.n_layers, self.n_heads, self.vocab_size = int(cfg.n_layers), int(cfg.n_heads), int(cfg.d_vocab)
        self.bos_token_id = None

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Any ``HookedTransformer`` (it exposes ``hook_dict`` and ``cfg``)."""
        return type(module).__name__ == "HookedTransformer" and hasattr(module, "hook_dict")

    def hook_points(self) -> dict[str, HookPoint]:
        """Every TransformerLens hook point under its own name, plus ``logits`` from ``unembed``."""
        points = {name: HookPoint(hp, _identity) for name, hp in self.model.hook_dict.items()}
        points[LOGITS] = HookPoint(self.model.unembed)
        return points
