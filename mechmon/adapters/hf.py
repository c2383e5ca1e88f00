"""Hugging Face causal LMs (GPT-2, GPT-NeoX/Pythia, Llama-style), built from configs or loaded by the user.

transformers >= 5 defaults to SDPA, which never returns attention probabilities (``output_attentions`` gives an
empty tuple). :meth:`HFAdapter.eager_attention` switches the model to eager attention for the probe forward
only and restores the previous implementation, so probes see true probabilities without slowing training.
In eager mode every supported attention module returns ``(output, weights)``; the hook reads ``weights``.
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
    expert_indices_name,
    first_output,
    pattern_name,
    resid_name,
    router_name,
)

__all__ = ["HFAdapter", "HF_LAYOUTS"]

# model_type -> (path of the decoder-layer list, attention attribute in a layer, path of the final norm)
HF_LAYOUTS: dict[str, tuple[str, str, str]] = {
    "gpt2": ("transformer.h", "attn", "transformer.ln_f"),
    "gpt_neox": ("gpt_neox.layers", "attention", "gpt_neox.final_layer_norm"),
    "llama": ("model.layers", "self_attn", "model.norm"),
    "mistral": ("model.layers", "self_attn", "model.norm"),
    "qwen2": ("model.layers", "self_attn", "model.norm"),
    "olmoe": ("model.layers", "self_attn", "model.norm"),
    "mixtral": ("model.layers", "self_attn", "model.norm"),
    "qwen2_moe": ("model.layers", "self_attn", "model.norm"),
}


def _expert_indices(output: Any) -> Tensor:
    if not (isinstance(output, tuple) and len(output) > 2):
        raise RuntimeError("the router returned no selected-expert indices (expected (logits, scores, indices))")
    return output[2]


def _attention_weights(output: Any) -> Tensor:
    weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
    if weights is None:
        raise RuntimeError(
            "the attention module returned no probabilities: the model is not running eager attention "
            "(run the forward inside adapter.eager_attention())"
        )
    return weights


class HFAdapter(Adapter):
    """Adapter for HF ``*ForCausalLM`` models whose ``config.model_type`` is in :data:`HF_LAYOUTS`.

    Raises:
        RuntimeError: if the model lacks a path its layout names.
    """

    family: ClassVar[str] = "hf"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg = model.config
        self.layout = HF_LAYOUTS[cfg.model_type]
        self.n_layers = int(cfg.num_hidden_layers)
        self.n_heads = int(cfg.num_attention_heads)
        self.vocab_size = int(cfg.vocab_size)
        self.bos_token_id = getattr(cfg, "bos_token_id", None)
        experts = next((getattr(cfg, a) for a in ("num_experts", "num_local_experts") if getattr(cfg, a, None)), 0)
        self.n_experts, self.top_k = int(experts), int(getattr(cfg, "num_experts_per_tok", 0) or 0)

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """HF models with a known ``model_type`` and an output head."""
        cfg = getattr(module, "config", None)
        get_head = getattr(module, "get_output_embeddings", None)
        has_head = callable(get_head) and get_head() is not None
        return getattr(cfg, "model_type", None) in HF_LAYOUTS and has_head

    def hook_points(self) -> dict[str, HookPoint]:
        """Canonical name -> hook point: patterns, residual stream, MoE router outputs (at the gate), norm, logits."""
        layers_path, attn_attr, norm_path = self.layout
        try:
            layers = self.model.get_submodule(layers_path)
            points = {FINAL_NORM: HookPoint(self.model.get_submodule(norm_path))}
        except AttributeError as err:
            raise RuntimeError(f"{type(self.model).__name__} does not have the layout {self.layout}: {err}") from err
        for i, layer in enumerate(layers):
            points[pattern_name(i)] = HookPoint(getattr(layer, attn_attr), _attention_weights)
            points[resid_name(i)] = HookPoint(layer)
            gate = getattr(getattr(layer, "mlp", None), "gate", None)
            if isinstance(gate, nn.Module) and getattr(gate, "weight", None) is not None:  # MoE layers only
                points[router_name(i)] = HookPoint(gate, first_output)
                points[expert_indices_name(i)] = HookPoint(gate, _expert_indices)
        points[LOGITS] = HookPoint(self.model.get_output_embeddings())
        return points

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Switch to eager attention for the duration; restores the previous implementation."""
        previous = getattr(self.model.config, "_attn_implementation", "eager")
        if previous != "eager":
            self.model.set_attn_implementation("eager")
        try:
            yield
        finally:
            if previous != "eager":
                self.model.set_attn_implementation(previous)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Logits ``[B, T, V]`` without a KV cache."""
        return self.model(input_ids=input_ids, use_cache=False).logits
