"""Base of the probes that read attention row statistics (max logit, entropy, mass on key 0) on a fixed batch.

The probe forward runs the model's attention through ``scaled_dot_product_attention`` (an HF model built eager is
switched to SDPA for the probe forward) and every call's q, k, mask, scale, GQA layout and causal flag are turned,
``chunk`` queries at a time, into ``[B, H, Q, 4]`` row statistics (:func:`~mechmon.functional.attention.row_stats`),
reduced to per-head tensors inside the hook: at most one ``[B, H, chunk, K]`` block exists at a time, and no
layer's pattern is kept. The batch is the plateau probes' fixed batch (the first training rows, or one given).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter, row_stats_name
from mechmon.checks import integer
from mechmon.functional.attention import check_queries
from mechmon.probes.fixed_batch import FixedBatchProbe

__all__ = ["AttentionRowsProbe"]


class AttentionRowsProbe(FixedBatchProbe):
    """Snapshot probe on the attention row statistics of every layer (see the module docstring).

    Subclasses implement :meth:`reduce_rows` (``[B, H, Q, 4]`` and the valid queries ``[B, Q]`` -> a per-head
    tensor) and :meth:`accumulate` (the ``[L, ...]`` stack of those, into their states).

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        max_rows: rows kept from the batch.
        seq_len: keep the first ``seq_len`` tokens of each row (``None``: all).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Raises:
        ValueError: on bad arguments.
    """

    requires = ("blocks.*.attn.hook_row_stats",)

    def __init__(self, batch: Any = None, max_rows: int = 8, seq_len: int | None = None, **kwargs: Any) -> None:
        if seq_len is not None:
            integer(type(self).__name__, "seq_len", seq_len, 2)
        self.seq_len = seq_len
        super().__init__(batch, max_rows, **kwargs)

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Remember the layers and heads; subclasses declare their ``[L, H]`` states in :meth:`declare`."""
        super().setup(model, adapter, device)
        self.names = [row_stats_name(i) for i in range(adapter.n_layers)]
        self.declare(adapter.n_layers, adapter.n_heads)

    def declare(self, n_layers: int, n_heads: int) -> None:
        """Declare the states (called in ``setup``)."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Cut the rows to ``seq_len`` tokens."""
        if self.seq_len is not None:
            self.probe_batch = self.probe_batch[:, : self.seq_len]
            self.attention_mask = self.attention_mask[:, : self.seq_len]

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """Row statistics ``[B, H, Q, 4]`` of one layer -> :meth:`reduce_rows` (inside the hook)."""
        return self.reduce_rows(check_queries(tensor, self.probe_batch.shape[1], name), self.attention_mask)

    def reduce_rows(self, stats_BHQ4: Tensor, valid_BQ: Tensor) -> Tensor:
        """One layer's row statistics -> the per-head tensor this probe keeps."""
        raise NotImplementedError

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Stack the layers' reduced tensors and add them to the states."""
        self.accumulate(torch.stack([captures[name] for name in self.names]))

    def accumulate(self, per_layer: Tensor) -> None:
        """Add the ``[L, ...]`` stack of this forward to the states."""
        raise NotImplementedError
