"""Model adapters and discovery.

Any HF decoder, TransformerLens model or decoder module with a block list is found with no adapter. For anything
else subclass :class:`Adapter` (or configure :class:`ModuleAdapter`) and pass it as ``adapter=...``; see README
"Custom models".
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn

from mechmon.adapters.base import (
    FINAL_NORM,
    LOGITS,
    Adapter,
    HookPoint,
    first_output,
    is_compile_wrapper,
    pattern_name,
    resid_name,
)
from mechmon.adapters.custom import ModuleAdapter
from mechmon.adapters.discover import Layout, common_parent, find_layout
from mechmon.adapters.hf import HFAdapter
from mechmon.adapters.structural import StructuralAdapter
from mechmon.adapters.transformer_lens import TransformerLensAdapter

__all__ = [
    "Adapter",
    "HookPoint",
    "ModuleAdapter",
    "HFAdapter",
    "StructuralAdapter",
    "TransformerLensAdapter",
    "Layout",
    "find_layout",
    "ADAPTERS",
    "resolve_adapter",
    "first_output",
    "pattern_name",
    "resid_name",
    "FINAL_NORM",
    "LOGITS",
]

ADAPTERS: list[type[Adapter]] = [TransformerLensAdapter, HFAdapter]

AdapterSpec = Adapter | Callable[[nn.Module], Adapter] | None

_HOWTO = (
    "Pass adapter=... with an Adapter for your model, e.g. adapter=lambda root: ModuleAdapter(root.net, "
    "{'blocks.0.attn.hook_pattern': 'layers.0.attn', 'logits': 'head'}, n_layers=..., n_heads=..., vocab_size=...). "
    "See README 'Custom models'."
)


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _candidates(root: nn.Module) -> list[tuple[str, Adapter]]:
    """Every HF / TransformerLens model in ``root`` (none nested in another), else a structural decoder."""
    found: list[tuple[str, Adapter]] = []
    for name, module in root.named_modules():
        if any(name.startswith(f"{p}.") or (p == "" and name) for p, _ in found):
            continue
        if is_compile_wrapper(module):  # torch.compile's wrapper: probe forwards run the original module
            continue
        cls = next((c for c in ADAPTERS if c.matches(module)), None)
        if cls is not None:
            found.append((name, cls(module)))
    if found or any(hasattr(getattr(m, "config", None), "model_type") for m in root.modules()):
        return found  # an HF model that is no decoder (RWKV, Mamba) is not guessed at by structure
    layout = find_layout(root)
    if layout is None or layout.head is None:
        return []
    path = common_parent(layout.blocks, layout.head)
    model = root.get_submodule(path)
    inner = find_layout(model)
    return [(path, StructuralAdapter(model, inner))] if inner is not None and inner.head is not None else []


def _choose(root: nn.Module, found: list[tuple[str, Adapter]]) -> Adapter:
    if len(found) == 1:
        path, adapter = found[0]
        if not _trainable(adapter.model):
            warnings.warn(
                f"mechmon monitors {path or '<root>'} ({type(adapter.model).__name__}), which has no "
                "trainable parameters",
                stacklevel=3,
            )
        return adapter
    trainable = [(p, a) for p, a in found if _trainable(a.model)]
    if len(trainable) == 1:
        return trainable[0][1]
    listed = [
        f"{p or '<root>'} ({type(a.model).__name__}, {'trainable' if _trainable(a.model) else 'frozen'})"
        for p, a in found
    ]
    raise RuntimeError(
        f"mechmon found {len(found)} models in {type(root).__name__} and cannot tell which one trains: {listed}; "
        f"choose one with submodule='<path>' (e.g. submodule={found[-1][0]!r})"
    )


def _submodule(root: nn.Module, path: str) -> nn.Module:
    try:
        return root.get_submodule(path)
    except AttributeError as err:
        children = [n for n, _ in root.named_children()]
        raise ValueError(
            f"submodule={path!r} is not a submodule of {type(root).__name__}; its children: {children}"
        ) from err


def resolve_adapter(root: nn.Module, adapter: AdapterSpec = None, submodule: str | None = None) -> Adapter:
    """Find the adapter for ``root`` (a LightningModule, a wrapper or a bare model).

    Args:
        root: the module to search.
        adapter: an :class:`Adapter`, a factory ``fn(root) -> Adapter``, or ``None`` to discover one.
        submodule: the dotted path of the submodule to monitor (e.g. ``"student"``), when ``root`` holds several
            models.

    Returns:
        An adapter bound to the model found: an HF decoder, a TransformerLens model, or a decoder module found by
        structure. Of several models, the one with trainable parameters.

    Raises:
        RuntimeError: if nothing is found (the message lists the modules looked at and how to write an adapter),
            or several trainable models are found (the message lists them and names ``submodule=``).
        ValueError: if ``submodule`` is not a submodule path of ``root``.
        TypeError: if ``adapter`` is neither an Adapter nor a callable returning one.
    """
    if isinstance(adapter, Adapter):
        return adapter
    if adapter is not None:
        if not callable(adapter):
            raise TypeError(f"adapter must be an Adapter or a callable returning one, got {type(adapter).__name__}")
        built = adapter(root)
        if not isinstance(built, Adapter):
            raise TypeError(f"the adapter factory returned {type(built).__name__}, not an Adapter")
        return built
    search = root if submodule is None else _submodule(root, submodule)
    found = _candidates(search)
    if found:
        return _choose(search, found)
    seen = [f"{n or '<root>'}: {type(m).__name__}" for n, m in search.named_modules() if n.count(".") < 2]
    raise RuntimeError(
        f"mechmon found no adapter for {type(search).__name__}. Looked at {seen[:30]} for an HF decoder, a "
        f"TransformerLens model, or a block list (nn.ModuleList) whose blocks hold an attention module and an output "
        f"head. {_HOWTO}"
    )
