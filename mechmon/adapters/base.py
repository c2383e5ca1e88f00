"""Adapter protocol: map one model family to TransformerLens-style canonical capture names.

Canonical names (shapes):
    ``blocks.{l}.attn.hook_pattern``   attention probabilities ``[B, H, Q, K]``
    ``blocks.{l}.attn.hook_row_stats`` per attention row ``[B, H, Q, 4]``: max logit, entropy (nats), visible keys,
                                       mass on key 0 (from the logits; see ``functional.attention.row_stats``)
    ``blocks.{l}.hook_resid_post``     residual stream after block ``l`` ``[B, T, d]``
    ``ln_final.hook_normalized``       final-norm hidden states ``[B, T, d]``
    ``blocks.{l}.mlp.hook_router_logits``   MoE router logits, pre-softmax ``[B·T, E]`` (hooked at the gate module)
    ``blocks.{l}.mlp.hook_expert_indices``  the router's selected experts ``[B·T, k]``
    ``logits``                         output-head logits ``[B, T, V]`` (or ``[N, C]`` for a classifier)
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from mechmon.adapters.discover import output_projection
from mechmon.sharding import TensorParallel, find_tensor_parallel, whole

__all__ = [
    "Adapter",
    "config_context",
    "context_length",
    "HookPoint",
    "HeadSite",
    "first_output",
    "pattern_name",
    "row_stats_name",
    "resid_name",
    "router_name",
    "expert_indices_name",
    "FINAL_NORM",
    "LOGITS",
    "CANONICAL_RE",
    "is_compile_wrapper",
]

FINAL_NORM = "ln_final.hook_normalized"
LOGITS = "logits"
CANONICAL_RE = re.compile(
    r"^(logits|ln_final\.hook_normalized|blocks\.\d+\.(attn\.hook_pattern|attn\.hook_row_stats|hook_resid_post|"
    r"mlp\.hook_router_logits|mlp\.hook_expert_indices))$"
)
CANONICAL_HELP = (
    "logits, ln_final.hook_normalized, blocks.{l}.attn.hook_pattern, blocks.{l}.attn.hook_row_stats, "
    "blocks.{l}.hook_resid_post, "
    "blocks.{l}.mlp.hook_router_logits, blocks.{l}.mlp.hook_expert_indices"
)


def pattern_name(layer: int) -> str:
    """Canonical attention-pattern name of ``layer``."""
    return f"blocks.{layer}.attn.hook_pattern"


def row_stats_name(layer: int) -> str:
    """Canonical attention row-statistics name of ``layer``."""
    return f"blocks.{layer}.attn.hook_row_stats"


def resid_name(layer: int) -> str:
    """Canonical residual-stream name after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def router_name(layer: int) -> str:
    """Canonical MoE router-logits name of ``layer``."""
    return f"blocks.{layer}.mlp.hook_router_logits"


def expert_indices_name(layer: int) -> str:
    """Canonical selected-experts name of ``layer``."""
    return f"blocks.{layer}.mlp.hook_expert_indices"


def is_compile_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is ``torch.compile``'s ``OptimizedModule`` wrapper.

    Without importing dynamo (about 2 s): if it was never imported, nothing was compiled.
    """
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return eval_frame is not None and isinstance(module, eval_frame.OptimizedModule)


def first_output(output: Any) -> Tensor:
    """A module's main output: the tensor itself, or the first element of a tuple or ``ModelOutput``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output[0] if hasattr(output, "__getitem__") else output


@dataclass(frozen=True)
class HookPoint:
    """Where a canonical name lives: a module and how to read the tensor from its forward output.

    ``attention=True`` marks an attention module read by :func:`mechmon.adapters.tap.attention_weights` (its returned
    probabilities, or those recomputed from its SDPA call; with ``stats=True`` the row statistics of its logits);
    ``extract`` is then unused.
    """

    module: nn.Module
    extract: Callable[[Any], Tensor] = first_output
    attention: bool = False
    stats: bool = False


@dataclass(frozen=True)
class HeadSite:
    """Where one layer's per-head attention outputs can be edited (ablation, :mod:`mechmon.ablation`).

    ``at_input=True``: the input of ``module``, the attention's output projection, holds the heads side by side
    ``[..., H * d_head]`` (edited by a forward pre-hook); ``False``: ``module``'s output is ``[..., H, d_head]``
    (TransformerLens's ``hook_z``, edited by a forward hook).
    """

    module: nn.Module
    at_input: bool = True


_CONTEXT_ATTRS = ("max_position_embeddings", "n_positions", "n_ctx", "seq_length", "block_size")


def config_context(cfg: Any) -> int | None:
    """The context length in tokens a model config names (HF names, nanoGPT's and LitGPT's ``block_size``)."""
    value = next((getattr(cfg, a) for a in _CONTEXT_ATTRS if isinstance(getattr(cfg, a, None), int)), None)
    return int(value) if value and value > 0 else None


def context_length(model: nn.Module) -> int | None:
    """A decoder module's context in tokens: LitGPT's ``max_seq_length``, else its ``config``'s (``block_size``...)."""
    try:
        own = getattr(model, "max_seq_length", None)
    except Exception:  # caveat: a property that raises before it is set (LitGPT without a context yet)
        own = None
    if isinstance(own, int) and own > 0:
        return own
    return config_context(getattr(model, "config", None))


_UNKNOWN = object()


class Adapter:
    """Bind a model to canonical capture names.

    Subclass it for a new family: implement :meth:`matches` (class method, used by auto-detection),
    :meth:`hook_points`, and set ``n_layers``, ``n_heads`` and ``vocab_size`` in ``__init__``. Override
    :meth:`eager_attention` when the model's fast attention hides probabilities, and :meth:`forward` when
    ``model(input_ids)`` does not return logits.

    Args:
        model: the module holding the transformer (e.g. an HF ``*ForCausalLM``).
    """

    family: ClassVar[str] = "custom"
    n_layers: int
    n_heads: int
    vocab_size: int
    bos_token_id: int | None = None
    max_positions: int | None = None  # the model's context in tokens, where known (HF / TransformerLens configs)
    n_experts: int = 0  # MoE models: experts per MoE layer
    top_k: int = 0  # MoE models: experts selected per token
    pipeline_stages: int = 1  # the stages a forward runs through (pipeline parallel: ``adapters.stage``)
    _tensor_parallel: Any = _UNKNOWN  # found from the weights at the first capture (after the model is sharded)

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    @classmethod
    def matches(cls, module: nn.Module) -> bool:
        """Whether this adapter understands ``module`` (auto-detection walks every submodule)."""
        return False

    def hook_points(self) -> dict[str, HookPoint]:
        """Canonical name -> :class:`HookPoint` for every name this model offers."""
        raise NotImplementedError

    @contextlib.contextmanager
    def eager_attention(self) -> Iterator[None]:
        """Context in which attention probabilities are materialised; restores the previous setting."""
        yield

    @contextlib.contextmanager
    def sdpa_attention(self) -> Iterator[None]:
        """Context in which attention runs through ``scaled_dot_product_attention`` (q and k readable by the tap)."""
        yield

    def head_sites(self) -> list[HeadSite]:
        """One :class:`HeadSite` per layer, for ablations: the output projection of each layer's attention.

        Found in the adapter's ``layout`` (HF and structural decoders; see
        :func:`~mechmon.adapters.discover.output_projection`).

        Raises:
            RuntimeError: when some layer's attention has no output projection, or the adapter has no layout (write
                ``head_sites`` for a custom adapter).
        """
        layout = getattr(self, "layout", None)
        if layout is None:
            raise RuntimeError(f"{self!r} names no attention output projection (override Adapter.head_sites)")
        sites = []
        for path in layout.attention:
            attention = self.model.get_submodule(path)
            projection = output_projection(attention)
            if projection is None:
                raise RuntimeError(f"{path} ({type(attention).__name__}) has no output projection to ablate heads at")
            sites.append(HeadSite(attention.get_submodule(projection)))
        return sites

    def names(self) -> list[str]:
        """Every canonical name a probe may ask for (the model's; every stage's under pipeline parallel)."""
        return list(self.hook_points())

    def trainable(self) -> list[tuple[str, Tensor]]:
        """(name, parameter) of every trainable tensor the weight probes read, tied weights once."""
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    def output_names(self) -> list[str]:
        """Names (in ``model``) of the output layer's weight, found by identity (handles tied embeddings)."""
        point = self.hook_points().get(LOGITS)
        weight = getattr(point.module, "weight", None) if point is not None else None
        return [n for n, p in self.model.named_parameters() if weight is not None and p is weight]

    def holds_activations(self) -> bool:
        """Whether this rank's activation probes send their states: not a copy of another rank's captures.

        A tensor-parallel group's ranks hold the same gathered captures: only its first rank sends them.
        """
        tp = self.tensor_parallel()
        return tp is None or tp.rank == 0

    def leads_activations(self) -> bool:
        """Whether this rank sends the replicated activation states under pipeline parallel (one rank does)."""
        return self.holds_activations()

    def feeds_probes(self) -> bool:
        """Whether the snapshot probes are updated here: every capture reaches this rank (pipeline: the last stage)."""
        return True

    def agree_max(self, value: int) -> int:
        """The largest ``value`` over the ranks a probe forward runs through (pipeline stages); ``value`` here."""
        return value

    @contextlib.contextmanager
    def collecting(self, captures: dict) -> Iterator[None]:
        """The scope of a probe forward's capture dict (pipeline stages pass it along); nothing here."""
        yield

    def forward(self, input_ids: Tensor) -> Tensor:
        """Run the model on token ids ``[B, T]`` and return logits ``[B, T, V]``."""
        return first_output(self.model(input_ids))

    def logits(self, input_ids: Tensor) -> Tensor:
        """:meth:`forward`'s logits ``[B, T, V]``, whole on every rank under tensor parallel (see :meth:`whole`)."""
        return self.whole(LOGITS, self.forward(input_ids))

    def whole(self, name: str, tensor: Tensor) -> Tensor:
        """The unsharded value of capture ``name``: a tensor-parallel rank's heads or vocabulary gathered.

        Identity unless the model is sharded (:func:`mechmon.sharding.whole`); a collective of the tensor-parallel
        group otherwise, which every rank of the group runs in the same forward.
        """
        heads = self.n_heads if name.endswith(("hook_pattern", "hook_row_stats")) else None
        return whole(tensor, self.tensor_parallel(), heads=heads, vocab=self.vocab_size if name == LOGITS else None)

    def tensor_parallel(self) -> TensorParallel | None:
        """The model's tensor-parallel group, found from its weights once (after the model is sharded), or None."""
        if self._tensor_parallel is _UNKNOWN:
            self._tensor_parallel = find_tensor_parallel(self.model)
        return self._tensor_parallel

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.model).__name__}, layers={self.n_layers}, heads={self.n_heads})"
