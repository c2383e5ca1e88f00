"""``mean_ablation()``: attention heads replaced by their mean output inside a block, then the hooks removed.

The heads are edited where the model joins them: the input of each layer's attention output projection (``o_proj``,
``c_proj``, ``dense``...; heads side by side ``[..., H * d_head]``), or TransformerLens's ``hook_z``
(:meth:`mechmon.adapters.Adapter.head_sites`). Under tensor parallel the projection's input is this rank's heads
(a ``Shard(-1)`` DTensor): each rank ablates the chosen heads it holds. The mask stays on the device: choosing heads
from device scores costs no host sync.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import Tensor, nn

from mechmon.adapters.base import Adapter, HeadSite
from mechmon.adapters.discover import input_width
from mechmon.functional.ablation import mean_ablate
from mechmon.sharding import is_dtensor

__all__ = ["mean_ablation", "AblationError"]


class AblationError(RuntimeError):
    """The heads could not be ablated in this model (its projection was not called, or is not ``H`` heads wide)."""


class _Editor:
    """The hooks' shared state: the mask, the tensor-parallel group, the layers whose site ran."""

    def __init__(self, adapter: Adapter, mask_LH: Tensor) -> None:
        self.heads, self.mask_LH, self.tp = adapter.n_heads, mask_LH, adapter.tensor_parallel()
        self.called: set[int] = set()

    def edit(self, layer: int, x: Tensor, site: HeadSite) -> Tensor:
        """``x`` with layer ``layer``'s masked heads mean-ablated.

        The heads this rank holds: all of them, or under tensor parallel the slice its share of the projection's
        input width says (the weight's global width over the input's local one), from its tensor-parallel rank on.
        """
        self.called.add(layer)
        local = x.to_local() if is_dtensor(x) else x
        tp_heads = self.heads // self.tp.size if self.tp is not None else self.heads
        if not site.at_input and local.ndim >= 2 and local.shape[-2] in (self.heads, tp_heads):
            here, d_head = local.shape[-2], local.shape[-1]  # [..., H, d_head]
        else:  # heads side by side [..., H * d_head]
            full = input_width(site.module) if site.at_input else local.shape[-1]
            here, d_head = self.heads * local.shape[-1] // full, full // self.heads
            if full % self.heads or here * d_head != local.shape[-1]:
                raise AblationError(f"layer {layer}: the heads' output width {local.shape[-1]} is not {here} heads")
        first = 0
        if here < self.heads:
            if self.tp is None or here * self.tp.size != self.heads:
                raise AblationError(f"layer {layer}: {here} of {self.heads} heads here and no tensor-parallel group")
            first = self.tp.rank * here
        z_NHD = local.reshape(-1, here, d_head)
        out = mean_ablate(z_NHD, self.mask_LH[layer, first : first + here]).reshape(local.shape)
        if is_dtensor(x):
            from torch.distributed.tensor import DTensor

            return DTensor.from_local(out, x.device_mesh, x.placements, run_check=False)
        return out

    def hook(self, layer: int, site: HeadSite) -> object:
        if site.at_input:

            def pre(module: nn.Module, args: tuple) -> tuple:
                return (self.edit(layer, args[0], site), *args[1:])

            return site.module.register_forward_pre_hook(pre)

        def post(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            return self.edit(layer, output, site)

        return site.module.register_forward_hook(post)


@contextlib.contextmanager
def mean_ablation(adapter: Adapter, mask_LH: Tensor) -> Iterator[None]:
    """Inside the block, every forward of the model runs with the heads of ``mask_LH`` mean-ablated.

    Args:
        adapter: the model's adapter (its :meth:`~mechmon.adapters.Adapter.head_sites`).
        mask_LH: bool ``[L, H]`` on the model's device, the heads to ablate.

    Raises:
        RuntimeError: as :meth:`Adapter.head_sites`.
        AblationError: on leaving the block, when some layer's site never ran (the attention reads its projection's
            weight without calling it, as ``nn.MultiheadAttention`` does): the ablation did not happen there; in the
            forward, when a projection's input is not ``H`` equal heads wide.
    """
    sites = adapter.head_sites()
    editor = _Editor(adapter, mask_LH)
    handles = [editor.hook(layer, site) for layer, site in enumerate(sites)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(range(len(sites))) - editor.called)
    if missing:
        raise AblationError(
            f"mechmon: no forward called layer {missing[0]}'s head site ({type(sites[missing[0]].module).__name__}): "
            "its heads were not ablated"
        )
