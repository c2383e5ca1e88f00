"""Hugging Face decoder-only causal LMs, of any architecture, found by their structure (no table of layouts).

The decoder-layer list, each layer's attention, the final norm and MoE gates come from
:func:`~mechmon.adapters.discover.find_layout`; the head is ``get_output_embeddings()``; sizes come from the config.
transformers >= 5 defaults to SDPA, which never returns attention probabilities (``output_attentions`` gives an
empty tuple). :meth:`HFAdapter.eager_attention` switches the model to eager attention for the probe forward only
and restores the previous implementation, so probes see the probabilities ``output_attentions=True`` would give;
an attention that still returns none gives them through the SDPA tap of :mod:`mechmon.capture`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, ClassVar

from torch import Tensor, nn

from mechmon.adapters.base import (
    FINAL_NORM,
    LOGITS,
    Adapter,
    HookPoint,
    config_context,
    expert_indices_name,
    first_output,
    pattern_name,
    resid_name,
    router_name,
    row_stats_name,
)
from mechmon.adapters.discover import Layout, find_layout

__all__ = ["HFAdapter", "hf_layout"]

_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")


def _expert_indices(output: Any) -> Tensor:
    if not (isinstance(output, tuple) and len(output) > 2):
        raise RuntimeError("the router returned no selected-expert indices (expected (logits, scores, indices))")
    return output[2]


def _n_experts(cfg: Any) -> int:
    return int(next((getattr(cfg, a) for a in _EXPERTS if isinstance(getattr(cfg, a, None), int)), 0) or 0)


def hf_layout(model: nn.Module) -> Layout | None:
    """The layout of an HF decoder-only causal LM (``config``, an output head, a block list), else ``None``."""
    cfg = getattr(model, "config", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if cfg is None or not hasattr(cfg, "model_type") or getattr(cfg, "is_encoder_decoder", False):
        return None
    head = get_head() if callable(get_head) else None
    if head is None or not isinstance(getattr(cfg, "num_attention_heads", None), int):  # RWKV: no softmax heads
        return None
    n_layers = getattr(cfg, "num_hidden_layers", None)
    layout = find_layout(
        model, head=head, n_layers=n_layers if isinstance(n_layers, int) else None, n_experts=_n_experts(cfg)
    )
    return layout if layout is not None and layout.head is not None else None


class HFAdapter(Adapter):
    """Adapter for HF decoder-only ``*ForCausalLM`` models, found by structure (see the module docstring).

    Raises:
        RuntimeError: if the model has no recognisable decoder layout.
    """

    family: ClassVar[str] = "hf"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        layout = hf_layout(model)
        if layout is None:
            raise RuntimeError(f"{type(model).__name__} has no decoder-layer list with attention and an output head")
        cfg = model.config
        self.layout = layout
        self.n_layers = layout.n_layers
        self.n_heads = int(cfg.num_attention_heads)
        self.vocab_size = int(cfg.vocab_size)
        self.bos_token_id = getattr(cfg, "bos_token_id", None)
        self.max_positions = config_context(cfg)
        self.n_experts, self.top_k = _n_experts(cfg), int(getattr(cfg, "num_experts_per_tok", 0) or 0)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """HF decoder-only models with an output head and a block list with attention."""
        return hf_layout(module) is not None

    def hook_points(self) -> dict[str, HookPoint]:
        """Canonical name -> hook point: patterns, residual stream, MoE router outputs (at the gate), norm, logits."""
        get = self.model.get_submodule
        layout = self.layout
        points: dict[str, HookPoint] = {}
        if layout.final_norm is not None:
            points[FINAL_NORM] = HookPoint(get(layout.final_norm))
        for i, attention in enumerate(layout.attention):
            points[pattern_name(i)] = HookPoint(get(attention), attention=True)
            points[row_stats_name(i)] = HookPoint(get(attention), attention=True, stats=True)
            points[resid_name(i)] = HookPoint(get(layout.block(i)))
        for i, gate in layout.routers:
            points[router_name(i)] = HookPoint(get(gate), first_output)
            points[expert_indices_name(i)] = HookPoint(get(gate), _expert_indices)
        points[LOGITS] = HookPoint(self.model.get_output_embeddings())
        return points

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Switch to eager attention for the duration; restores the previous implementation."""
        with self._attention("eager"):  # caveat: an attention without eager support is read through the tap
            yield

    @contextlib.contextmanager
    def sdpa_attention(self) -> Iterator[None]:
        """Switch to SDPA attention for the duration (its q and k are read by the tap); restores the previous one."""
        with self._attention("sdpa"):
            yield

    @contextlib.contextmanager
    def _attention(self, implementation: str) -> Iterator[None]:
        previous = getattr(self.model.config, "_attn_implementation", "eager")
        switch = previous != implementation and callable(getattr(self.model, "set_attn_implementation", None))
        if switch:
            try:
                self.model.set_attn_implementation(implementation)
            except (ValueError, ImportError):  # the model does not support it: run as it is
                switch = False
        try:
            yield
        finally:
            if switch:
                self.model.set_attn_implementation(previous)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` without a KV cache."""
        return self.model(input_ids=input_ids, use_cache=False).logits
