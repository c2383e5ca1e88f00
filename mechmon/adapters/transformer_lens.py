"""TransformerLens models: ``HookedTransformer`` (transformer-lens 3.x) and ``TransformerBridge`` (4.x).

Both expose their hook points under canonical names (``blocks.{l}.attn.hook_pattern`` ``[B, H, Q, K]``, ...) in
``hook_dict``, and take token ids as their first positional argument (the bridge's is named ``input``). Detected by
class name, so mechmon never imports transformer-lens itself.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter, HeadSite, HookPoint, first_output
from mechmon.functional.attention import probability_row_stats, row_stats

__all__ = ["TransformerLensAdapter"]

_CLASSES = ("HookedTransformer", "TransformerBridge")


def _identity(output: object) -> object:
    return output


def _config_int(cfg: Any, *names: str) -> int:
    value = next((getattr(cfg, n) for n in names if isinstance(getattr(cfg, n, None), int)), None)
    if value is None:
        raise RuntimeError(f"TransformerLens config has none of {names}")
    return int(value)


class TransformerLensAdapter(Adapter):
    """Adapter for ``HookedTransformer`` and ``TransformerBridge``; patterns from ``blocks.{l}.attn.hook_pattern``."""

    family: ClassVar[str] = "transformer_lens"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg = model.cfg
        self.n_layers = _config_int(cfg, "n_layers", "num_hidden_layers")
        self.n_heads = _config_int(cfg, "n_heads", "num_attention_heads")
        self.vocab_size = _config_int(cfg, "d_vocab", "vocab_size")
        self.bos_token_id = None
        n_ctx = getattr(cfg, "n_ctx", None)
        self.max_positions = int(n_ctx) if isinstance(n_ctx, int) and n_ctx > 0 else None

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """A ``HookedTransformer`` or ``TransformerBridge`` (it exposes ``hook_dict`` and ``cfg``)."""
        return type(module).__name__ in _CLASSES and hasattr(module, "hook_dict") and hasattr(module, "cfg")

    def hook_points(self) -> dict[str, HookPoint]:
        """Every TransformerLens hook point under its own name, row statistics and ``logits``.

        ``blocks.{l}.attn.hook_row_stats`` is read from ``HookedTransformer``'s ``hook_attn_scores`` (pre-softmax,
        masked with -inf); ``TransformerBridge`` 4.x fills ``hook_attn_scores`` with the probabilities, so there it
        comes from ``hook_pattern`` with the max logit NaN. ``logits`` from ``unembed``.
        """
        points = {name: HookPoint(hp, _identity) for name, hp in self.model.hook_dict.items()}
        bridge = type(self.model).__name__ == "TransformerBridge"
        source, extract = ("attn.hook_pattern", _bridge_row_stats) if bridge else ("attn.hook_attn_scores", row_stats)
        for name, hp in self.model.hook_dict.items():
            if name.endswith(source):
                points[name.replace(source, "attn.hook_row_stats")] = HookPoint(hp, extract)
        unembed = getattr(self.model, "unembed", None)
        if isinstance(unembed, nn.Module):
            points[LOGITS] = HookPoint(unembed)
        return points

    def head_sites(self) -> list[HeadSite]:
        """Each layer's ``blocks.{l}.attn.hook_z`` ``[B, T, H, d_head]``, the heads' outputs before ``W_O``."""
        hooks = self.model.hook_dict
        missing = [i for i in range(self.n_layers) if f"blocks.{i}.attn.hook_z" not in hooks]
        if missing:
            raise RuntimeError(f"{self!r} has no blocks.{missing[0]}.attn.hook_z to ablate heads at")
        return [HeadSite(hooks[f"blocks.{i}.attn.hook_z"], at_input=False) for i in range(self.n_layers)]

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]``: token ids as the first positional argument, as both classes take them."""
        return first_output(self.model(input_ids))


def _bridge_row_stats(pattern_BHQK: Tensor) -> Tensor:
    warnings.warn(
        "mechmon: TransformerBridge exposes no pre-softmax attention scores (its hook_attn_scores holds the "
        "probabilities): the max attention logit is NaN; entropy and sinks come from hook_pattern",
        stacklevel=2,
    )
    return probability_row_stats(pattern_BHQK)
