"""TransformerLens models: ``HookedTransformer`` (transformer-lens 3.x) and ``TransformerBridge`` (4.x).

Both expose their hook points under canonical names (``blocks.{l}.attn.hook_pattern`` ``[B, H, Q, K]``, ...) in
``hook_dict``, and take token ids as their first positional argument (the bridge's is named ``input``). Detected by
class name, so mechmon never imports transformer-lens itself.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter, HookPoint, first_output
from mechmon.functional.attention import row_stats

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

        ``blocks.{l}.attn.hook_row_stats`` is read from ``hook_attn_scores`` (TransformerLens masks them with -inf);
        ``logits`` from ``unembed``.
        """
        points = {name: HookPoint(hp, _identity) for name, hp in self.model.hook_dict.items()}
        for name, hp in self.model.hook_dict.items():  # the masked pre-softmax scores give the row statistics
            if name.endswith("attn.hook_attn_scores"):
                points[name.replace("hook_attn_scores", "hook_row_stats")] = HookPoint(hp, row_stats)
        unembed = getattr(self.model, "unembed", None)
        if isinstance(unembed, nn.Module):
            points[LOGITS] = HookPoint(unembed)
        return points

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]``: token ids as the first positional argument, as both classes take them."""
        return first_output(self.model(input_ids))
