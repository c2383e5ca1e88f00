"""Model adapters and auto-detection.

Write your own by subclassing :class:`Adapter` (or configure :class:`ModuleAdapter`) and pass it as
``MechMonitor(adapter=...)``; see README "Custom models".
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from mechmon.adapters.base import FINAL_NORM, LOGITS, Adapter, HookPoint, first_output, pattern_name, resid_name
from mechmon.adapters.custom import ModuleAdapter
from mechmon.adapters.hf import HF_LAYOUTS, HFAdapter
from mechmon.adapters.transformer_lens import TransformerLensAdapter

__all__ = [
    "Adapter",
    "HookPoint",
    "ModuleAdapter",
    "HFAdapter",
    "TransformerLensAdapter",
    "ADAPTERS",
    "resolve_adapter",
    "first_output",
    "pattern_name",
    "resid_name",
    "FINAL_NORM",
    "LOGITS",
]

ADAPTERS: list[type[Adapter]] = [HFAdapter, TransformerLensAdapter]

AdapterSpec = Adapter | Callable[[nn.Module], Adapter] | None

_HOWTO = (
    "Pass MechMonitor(adapter=...) with an Adapter for your model, e.g. "
    "adapter=lambda pl_module: ModuleAdapter(pl_module.net, {'blocks.0.attn.hook_pattern': ('layers.0.attn', "
    "lambda out: out[1]), 'logits': 'head'}, n_layers=..., n_heads=..., vocab_size=...). See README 'Custom models'."
)


def resolve_adapter(root: nn.Module, adapter: AdapterSpec = None) -> Adapter:
    """Find the adapter for ``root`` (a LightningModule or a bare model).

    Args:
        root: the module to search; every submodule is tried in order, root first.
        adapter: an :class:`Adapter`, a factory ``fn(root) -> Adapter``, or ``None`` to auto-detect.

    Returns:
        An adapter bound to the matching (sub)module.

    Raises:
        RuntimeError: if nothing matches; the message lists the modules looked at and how to write an adapter.
        TypeError: if ``adapter`` is neither an Adapter nor a callable.
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
    seen = []
    for name, module in root.named_modules():
        for cls in ADAPTERS:
            if cls.matches(module):
                return cls(module)
        if name.count(".") < 2:
            seen.append(f"{name or '<root>'}: {type(module).__name__}")
    raise RuntimeError(
        f"mechmon found no adapter for {type(root).__name__}. Looked at {seen[:30]}; known: HF model types "
        f"{sorted(HF_LAYOUTS)} and TransformerLens HookedTransformer. {_HOWTO}"
    )
