"""``mean_ablation()``: attention heads replaced by their mean output inside a block, then the hooks removed.

The heads are edited where the model joins them: the input of each layer's attention output projection (``o_proj``,
``c_proj``, ``dense``...; heads side by side ``[..., H * d_head]``), or TransformerLens's ``hook_z``
(:meth:`mechmon.adapters.Adapter.head_sites`). Under tensor parallel the projection's input is this rank's heads
(a ``Shard(-1)`` DTensor): each rank ablates the chosen heads it holds. The mask stays on the device: choosing heads
from device scores costs no host sync.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter, HeadSite
from mechmon.adapters.discover import input_width
from mechmon.distributed import rank_zero_warn
from mechmon.functional.ablation import mean_ablate, top_heads
from mechmon.sharding import is_dtensor

__all__ = ["mean_ablation", "AblationError", "HeadAblation", "ABLATED"]

ABLATED = "ablated_losses"  # a snapshot's capture: the losses with heads ablated, [1 (+ k each)]


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


class HeadAblation:
    """Mean ablation of a snapshot probe's best heads, after its scored forward (load-bearing heads).

    The probe scores each layer's heads in ``reduce_capture`` through :meth:`scored`, calls :meth:`setup_ablation` in
    ``setup`` and, in ``snapshot``, :meth:`ablated_losses` after its scored forward. ``loss(logits)`` is the 0-d
    loss the gap is taken on. During the ablation forwards :meth:`scored` returns the scored forward's values (an
    ablated model's patterns are not scored). The heads are chosen from the device scores (no sync).
    """

    ablate_k: int = 0
    ablate_each: bool = False
    _ablate: int = 0  # heads ablated together (0: no ablation forward)
    _ablating: bool = False

    def setup_ablation(self, adapter: Adapter, key: str) -> None:
        """Decide how many heads to ablate and declare ``ablated_sum`` ``[1 (+ k)]``.

        0 where the model's heads cannot be ablated, warned once with the reason; ``key``: the gap's key, named there.
        """
        self._clean: dict[str, Tensor] = {}
        self._told = False
        self._ablate = 0
        if self.ablate_k:
            why = "a pipeline stage holds only its own layers' scores" if adapter.pipeline_stages > 1 else None
            try:
                adapter.head_sites()
            except RuntimeError as err:
                why = why or str(err)
            if why:
                owner = type(self).__name__
                rank_zero_warn(f"mechmon: {owner} cannot ablate heads ({why}): {key} is not logged; "
                               f"{owner}(ablate_k=0) silences this")  # fmt: skip
            else:
                self._ablate = min(self.ablate_k, adapter.n_layers * adapter.n_heads)
        sizes = 1 + self._ablate if self.ablate_each else int(self._ablate > 0)  # together, then each alone
        self.add_state("ablated_sum", torch.zeros(sizes), "sum")

    def scored(self, name: str, score: Callable[[], Tensor]) -> Tensor:
        """``score()`` of capture ``name``, kept for the choice of heads; the kept one during ablation forwards."""
        if self._ablating:
            return self._clean[name]
        self._clean[name] = score()
        return self._clean[name]

    def ablated_losses(
        self, adapter: Adapter, scores_LH: Tensor, batch: Tensor, loss: Callable[[Tensor], Tensor]
    ) -> Tensor:
        """``[1 (+ k)]``: ``loss`` of the logits on ``batch`` with the best heads of ``scores_LH`` mean-ablated.

        Together, then each alone (``ablate_each``); NaN, with the reason warned once, when the model's cannot be.
        """
        top = top_heads(scores_LH, self._ablate)
        chosen = [top] + ([top[i : i + 1] for i in range(len(top))] if self.ablate_each else [])
        losses, self._ablating = [], True
        try:
            for heads in chosen:
                mask = torch.zeros(scores_LH.numel(), dtype=torch.bool, device=top.device)
                with mean_ablation(adapter, mask.index_fill(0, heads, True).view(scores_LH.shape)):
                    losses.append(loss(adapter.logits(batch)))
        except AblationError as err:  # the same model on every rank: every rank lands here alike
            if not self._told:
                rank_zero_warn(f"mechmon: {type(self).__name__} could not ablate heads: {err}; the gap is NaN")
                self._told = True
            losses = [torch.tensor(math.nan, device=top.device)] * len(chosen)
        finally:
            self._ablating = False
        return torch.stack(losses)

    def ablation_gaps(self, clean: Tensor, count: Tensor) -> dict[str, Tensor]:
        """``ablation_gap_nats`` (together) and ``ablation_gap_nats/top<i>`` (alone), empty without ablation.

        The mean ablated loss over ``count`` forwards minus ``clean``.
        """
        if not self._ablate:
            return {}
        gap = self.ablated_sum / count - clean
        out = {self.key("ablation_gap_nats"): gap[0]}
        for i in range(1, gap.numel()):
            out[self.key("ablation_gap_nats", f"top{i}")] = gap[i]
        return out
