"""Base of the snapshot probes that read real data: a fixed batch given by the user or taken from training.

The plateau family (metrics C1-C4) measures a model on a fixed batch of its own task or text. The batch is either
passed to the probe (token ids ``[B, T]``, or a mapping with ``input_ids`` and optionally ``attention_mask``) or,
by default, the first ``max_rows`` rows of the first training batch, copied once and kept on the model's device.
Padding must be on the right, where the causal model never looks back at it.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import Adapter
from mechmon.capture import capture
from mechmon.functional.plateau import loss_at_positions
from mechmon.functional.stats import mean_or_nan
from mechmon.params import reshard
from mechmon.probe import SnapshotProbe

__all__ = ["FixedBatchProbe", "batch_fingerprint", "batch_tokens", "check_positions", "hidden_width", "usable_rows"]


def batch_tokens(batch: Any, owner: str) -> tuple[Tensor, Tensor]:
    """Token ids ``[B, T]`` and attention mask ``[B, T]`` from a tensor, a mapping or an ``(inputs, ...)`` tuple.

    Raises:
        TypeError: if no 2-d integer tensor of ids can be found (the message names the fix).
    """
    ids, mask = batch, None
    if isinstance(batch, Mapping):
        ids, mask = batch.get("input_ids"), batch.get("attention_mask")
    elif isinstance(batch, (tuple, list)) and batch:
        ids = batch[0]
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.is_floating_point() or ids.is_complex():
        raise TypeError(
            f"{owner} needs token ids [B, T]: a LongTensor, a mapping with 'input_ids' (and optionally "
            f"'attention_mask'), or a tuple whose first item is the ids; got {type(batch).__name__}. "
            f"Pass batch=... to {owner} explicitly."
        )
    mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
    if mask.shape != ids.shape:
        raise TypeError(f"{owner}: attention_mask {tuple(mask.shape)} does not match input_ids {tuple(ids.shape)}")
    return ids, mask


def check_positions(positions: Sequence[int] | None, owner: str) -> list[int] | None:
    """Validate a position list: two or more distinct ints >= 0 (``None`` passes through).

    Raises:
        ValueError: otherwise.
    """
    if positions is None:
        return None
    values = list(positions) if isinstance(positions, (list, tuple, range)) else []
    if len(values) < 2 or not all(isinstance(p, int) and p >= 0 for p in values) or len(set(values)) != len(values):
        raise ValueError(f"{owner}(positions=...) needs two or more distinct ints >= 0, got {positions!r}")
    return values


def usable_rows(ids: Tensor, mask: Tensor, max_rows: int, min_tokens: int = 2) -> tuple[Tensor, Tensor]:
    """The first ``max_rows`` rows of ``ids`` / ``mask`` (``[B, T]``) with ``min_tokens`` or more real tokens.

    One host sync (the row selection).
    """
    rows = (mask.sum(dim=1) >= min_tokens).nonzero().flatten()[:max_rows]
    return ids[rows], mask[rows]


_TOKENS: dict[int, tuple[weakref.ref, int]] = {}  # id -> (weak reference, token) of the batch tensors seen
_COUNT = itertools.count()


def _token(tensor: Tensor) -> int:
    """A number naming ``tensor`` while it lives (no reference kept: the loader's batch can be freed)."""
    entry = _TOKENS.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        for key in [k for k, (ref, _) in _TOKENS.items() if ref() is None]:
            del _TOKENS[key]
        entry = _TOKENS[id(tensor)] = (weakref.ref(tensor), next(_COUNT))
    return entry[1]


def batch_fingerprint(batch: Any, *settings: object) -> tuple:
    """What names a probe batch's source, to tell which snapshot probes can share one forward (no sync, no copy).

    The tensor objects of ``batch`` (its ids and, when it has one, its mask) while they live, plus ``settings``:
    probes given the same tensor, or taking their rows from the same training batch, get one fingerprint.
    """
    if isinstance(batch, Mapping):
        parts = (batch.get("input_ids"), batch.get("attention_mask"))
    elif isinstance(batch, (tuple, list)) and batch:
        parts = (batch[0], None)
    else:
        parts = (batch, None)
    return tuple(_token(t) if isinstance(t, Tensor) else None for t in parts) + settings


def hidden_width(adapter: Adapter, name: str, device: torch.device) -> int:
    """Last dimension of capture ``name``, read from a two-token ``no_grad`` forward (shapes only).

    The forward runs in eval mode, so no dropout draws from the run's random stream; under FSDP2 the model is
    resharded after it (a ``no_grad`` forward leaves the root's parameters gathered, and a weight probe set up next
    would hold the gathered tensors). Under pipeline parallel the stage holding ``name`` measures it and every
    stage agrees on it (:meth:`Adapter.agree_max`).
    """
    model, was_training = adapter.model, adapter.model.training
    model.eval()
    try:
        with torch.no_grad(), capture(adapter, [name]) as caps:
            adapter.forward(torch.zeros((1, 2), dtype=torch.long, device=device))
    finally:
        model.train(was_training)
        reshard(model)
    return adapter.agree_max(int(caps[name].shape[-1]) if name in caps else 0)


class FixedBatchProbe(SnapshotProbe):
    """A snapshot probe on a fixed batch of real data (see the module docstring).

    Subclasses declare states in :meth:`setup` (calling ``super().setup``) and build their masks in
    :meth:`prepare`, which runs once the batch is known.

    Args:
        batch: token ids ``[B, T]``, a mapping with ``input_ids`` / ``attention_mask``, or ``None`` for the first
            training batch.
        max_rows: rows kept from the batch (>= 1).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Raises:
        TypeError: if ``batch`` holds no 2-d integer ids.
        ValueError: if ``max_rows`` is not a positive int.
    """

    min_tokens = 2  # real tokens a row needs to be kept (one next-token target)

    def __init__(self, batch: Any = None, max_rows: int = 8, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(max_rows, int) or max_rows < 1:
            raise ValueError(f"{type(self).__name__}(max_rows=...) must be an int >= 1, got {max_rows!r}")
        self.max_rows = max_rows
        given = None if batch is None else batch_tokens(batch, type(self).__name__)
        self._given = None if given is None else usable_rows(*given, max_rows, self.min_tokens)
        self._given_source = batch  # names the batch for sharing forwards (the user keeps it, or the key is unique)
        if self._given is not None and self._given[0].shape[0] == 0:
            raise ValueError(
                f"{type(self).__name__}(batch=...) has no row with {self.min_tokens} or more real tokens: pass rows "
                f"of at least {self.min_tokens} tokens, or batch=None to take them from training"
            )
        self._ready = False
        self._skipped = False
        self._device = torch.device("cpu")

    @property
    def needs_batch(self) -> bool:
        """True until the probe holds a batch; the monitor then passes it the first training batch."""
        return not self._ready

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Remember the device and, if the user gave a batch, prepare it now."""
        self._device, self._ready = device, False
        if self._given is not None:
            self._use(*self._given, self._given_source)

    def take_batch(self, batch: Any) -> None:
        """Keep the first ``max_rows`` usable rows of a training batch (copied: no reference to the loader's tensor).

        A batch with no row of two or more real tokens (all padding) is skipped with one warning and the probe waits
        for the next; reading the mask costs one host sync per batch taken or skipped.
        """
        ids, mask = usable_rows(*batch_tokens(batch, type(self).__name__), self.max_rows, self.min_tokens)
        if ids.shape[0] == 0:
            if not self._skipped:
                warnings.warn(
                    f"mechmon: {type(self).__name__} skipped a training batch with no row of {self.min_tokens} or "
                    "more real tokens (all padding, or rows too short); it takes its probe batch from the next one "
                    "and logs nothing until then",
                    stacklevel=2,
                )
            self._skipped = True
            return
        self._use(ids, mask, batch)

    def _use(self, ids: Tensor, mask: Tensor, source: Any) -> None:
        """Keep ``ids`` / ``mask`` as the probe batch; ``source``: the batch they were read from (names it)."""
        self.probe_batch = ids.to(self._device).clone()
        self.attention_mask = mask.to(self._device).clone()
        self.prepare()
        self.batch_key = batch_fingerprint(source, self.min_tokens, tuple(self.probe_batch.shape))
        self._ready = True

    def state_dict(self) -> dict[str, Tensor]:
        """The states plus the probe batch taken from training, so a resumed run measures the same rows."""
        state = super().state_dict()
        if self._ready and self._given is None:
            state["probe_batch"], state["attention_mask"] = self.probe_batch.cpu(), self.attention_mask.cpu()
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore the probe batch first (its masks and states depend on it), then the states."""
        if self._given is None and "probe_batch" in state:
            self._use(state["probe_batch"], state["attention_mask"].bool(), state["probe_batch"])
        super().load_state_dict(state)

    def prepare(self) -> None:
        """Build position masks from ``probe_batch`` and ``attention_mask`` (``[B, T]`` on the device)."""

    def add_loss_state(self) -> None:
        """Declare ``loss_sum`` / ``loss_count``, the teacher-forced loss at a probe's positions (call in ``setup``)."""
        self.add_state("loss_sum", torch.zeros(()), "sum")
        self.add_state("loss_count", torch.zeros((), dtype=torch.int64), "sum")

    def add_position_loss(self, logits_BTV: Tensor, mask_BT: Tensor) -> None:
        """Add the next-token loss at the positions of ``mask_BT`` (``[B, T]``) to the loss state."""
        loss = loss_at_positions(logits_BTV, self.probe_batch, mask_BT, self.attention_mask)
        self.loss_sum += loss[0]
        self.loss_count += loss[1].long()

    def loss_nats(self) -> Tensor:
        """Mean loss in nats over the positions added since the last reset (NaN when none)."""
        return mean_or_nan(self.loss_sum, self.loss_count)
