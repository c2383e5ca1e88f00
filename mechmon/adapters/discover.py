"""Structural discovery of a decoder's parts: the block list, each block's attention, the final norm, the head.

No table of known layouts: a decoder is recognised by its shape. The block list is the first ``nn.ModuleList`` (or
``nn.ModuleDict``, as pipeline stages keep their blocks under global indices) whose items share one class and each
hold an attention module (a submodule whose class name says Attention or Attn); the attention of a block is its
shallowest such submodule; the final norm is the last norm module (class name with "Norm") registered after the
blocks outside them; the head is the module the caller names (HF's ``get_output_embeddings()``) or else the last
``nn.Linear`` outside the blocks, preferring one as wide as a token embedding. MoE routers are a block's submodule
named ``gate`` or ``router`` whose ``weight`` is ``[n_experts, d]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

__all__ = ["Layout", "find_layout", "common_parent", "output_projection", "input_width"]

_ATTENTION = re.compile(r"attention|attn", re.IGNORECASE)
_NORM = re.compile(r"norm", re.IGNORECASE)


@dataclass(frozen=True)
class Layout:
    """Paths (relative to the model) of the parts a monitor hooks."""

    blocks: str
    attention: tuple[str, ...]
    final_norm: str | None
    head: str | None
    routers: tuple[tuple[int, str], ...] = ()
    keys: tuple[str, ...] = ()  # the blocks' names in the container, in order (default "0", "1", ...)

    @property
    def n_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.attention)

    def block(self, layer: int) -> str:
        """Path of block ``layer`` (its position in the container)."""
        return f"{self.blocks}.{self.keys[layer] if self.keys else layer}"


def _is_attention(module: nn.Module) -> bool:
    name = type(module).__name__
    return bool(_ATTENTION.search(name)) and not _NORM.search(name)


def _attention_in(block: nn.Module) -> str | None:
    """Path of the shallowest attention submodule of ``block``, relative to it (registration order breaks ties)."""
    found = [
        (name.count("."), i, name) for i, (name, m) in enumerate(block.named_modules()) if name and _is_attention(m)
    ]
    if found:
        return min(found)[2]
    return "" if _is_attention(block) else None  # an attention-only model: the block is the attention


def _blocks(model: nn.Module, n_layers: int | None) -> tuple[str, list[str], list[str]] | None:
    """The first homogeneous ModuleList / ModuleDict whose items all hold attention (``n_layers`` long where given).

    Returns its path, the attention path of each block and the blocks' keys.
    """
    for path, module in model.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.ModuleDict)) or len(module) == 0:
            continue
        if n_layers and len(module) != n_layers:
            continue
        named = list(module.items()) if isinstance(module, nn.ModuleDict) else list(enumerate(module))
        if len({type(b) for _, b in named}) != 1:
            continue
        inner = [_attention_in(b) for _, b in named]
        if all(a is not None for a in inner):
            keys = [str(k) for k, _ in named]
            return path, [".".join(p for p in (path, k, a) if p) for k, a in zip(keys, inner, strict=True)], keys
    return None


def _outside(path: str, blocks: str) -> bool:
    return not (path == blocks or path.startswith(f"{blocks}."))


def _final_norm(model: nn.Module, blocks: str, head: str | None) -> str | None:
    """The last norm after the blocks; else (OPT registers it first) the last one before them not on embeddings."""
    modules = list(model.named_modules())
    at = [n for n, _ in modules].index(blocks)
    norms = [
        (i > at, n)
        for i, (n, m) in enumerate(modules)
        if n and _outside(n, blocks) and _NORM.search(type(m).__name__) and (head is None or _outside(n, head))
    ]
    after = [n for later, n in norms if later]
    before = [n for later, n in norms if not later and "emb" not in n.lower()]
    return (after or before or [None])[-1]


def _head(model: nn.Module, blocks: str, head: nn.Module | None) -> str | None:
    modules = [(n, m) for n, m in model.named_modules() if n and _outside(n, blocks)]
    if head is not None:
        return next((n for n, m in modules if m is head), None)
    widths = {m.num_embeddings for _, m in modules if isinstance(m, nn.Embedding)}
    linears = [(n, m) for n, m in modules if isinstance(m, nn.Linear)]
    matching = [n for n, m in linears if m.out_features in widths]
    return (matching or [n for n, _ in linears] or [None])[-1]


def _routers(model: nn.Module, blocks: str, keys: list[str], n_experts: int) -> tuple[tuple[int, str], ...]:
    if n_experts < 2:
        return ()
    found = []
    for i, key in enumerate(keys):
        for name, m in model.get_submodule(f"{blocks}.{key}").named_modules():
            weight = getattr(m, "weight", None)
            if name.split(".")[-1] in ("gate", "router") and getattr(weight, "ndim", 0) == 2:
                if weight.shape[0] == n_experts:
                    found.append((i, f"{blocks}.{key}.{name}"))
                    break
    return tuple(found)


def find_layout(
    model: nn.Module, head: nn.Module | None = None, n_layers: int | None = None, n_experts: int = 0
) -> Layout | None:
    """The decoder layout of ``model``, or ``None`` when it has no block list with attention.

    Args:
        model: the module to search.
        head: the output head, when the caller knows it (HF ``get_output_embeddings()``).
        n_layers: the expected number of blocks, when known (HF ``config.num_hidden_layers``).
        n_experts: experts per MoE layer (0: no routers are looked for).
    """
    found = _blocks(model, n_layers) or (_blocks(model, None) if n_layers else None)
    if found is None:
        return None
    blocks, attention, keys = found
    head_path = _head(model, blocks, head)
    return Layout(
        blocks=blocks,
        attention=tuple(attention),
        final_norm=_final_norm(model, blocks, head_path),
        head=head_path,
        routers=_routers(model, blocks, keys, n_experts),
        keys=tuple(keys),
    )


def input_width(module: nn.Module) -> int:
    """The input width of a 2-d weight module (``nn.Linear`` ``[out, in]``, GPT-2's ``Conv1D`` ``[in, out]``).

    Whole under tensor parallel: a DTensor weight has its global shape.
    """
    return int(module.weight.shape[0 if type(module).__name__ == "Conv1D" else 1])


_PROJECTIONS = ("o_proj", "out_proj", "c_proj", "dense", "wo")  # what decoders call it (case aside)


def output_projection(attention: nn.Module) -> str | None:
    """Path (relative to ``attention``) of its output projection, or ``None``.

    The last submodule with a 2-d ``weight`` named as decoders name it: ``o_proj``, ``out_proj``, ``c_proj``,
    ``dense`` or ``Wo`` (Llama and most, OPT and GPT-J, GPT-2, GPT-NeoX and Bloom, ModernBERT). Shapes cannot tell it
    apart: an output gate computed from the hidden states (Beam's ``gate_proj``) has the same widths. Its input holds
    the heads' outputs side by side ``[..., H * d_head]``; whether a forward calls it is checked where it is used
    (``nn.MultiheadAttention`` reads ``out_proj.weight`` without calling the module).
    """
    found = [
        name
        for name, m in attention.named_modules()
        if name.rsplit(".", 1)[-1].lower() in _PROJECTIONS and getattr(getattr(m, "weight", None), "ndim", 0) == 2
    ]
    return found[-1] if found else None


def common_parent(*paths: str) -> str:
    """The longest common dotted prefix of ``paths`` (``""`` for the root)."""
    parts = [p.split(".") for p in paths]
    common = []
    for segment in zip(*parts, strict=False):
        if len(set(segment)) != 1:
            break
        common.append(segment[0])
    return ".".join(common)
