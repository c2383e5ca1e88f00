"""Logits probe: softmax collapse, zero-loss fraction and logit scale from the training batch's own logits.

Phenomenon: softmax collapse, Prieto, Barsbey, Mediano, Birdal, *Grokking at the Edge of Numerical Stability*
(ICLR 2025); docs/metrics.md A1-A3. Streaming probe: no extra forward. The logits are read by a forward hook on the
model's output head (adapter name ``logits``) attached only for the micro-batches of a scheduled step, so a
``training_step`` that returns only the loss works unchanged. The targets come from the training batch:

* a tensor ``[B, T]`` or a dict with ``labels`` (else ``input_ids``): HF convention, row t predicts t+1;
* a tuple/list ``(x, y)``: ``y`` is already aligned with the logits (``[B, T]`` LM or ``[N]`` classifier);
* anything else: pass ``targets=fn(batch) -> (targets, shift)``.

Logged metrics (``<ns>`` = namespace):

=============================================  ==========================================  ==========  ======
key                                            meaning                                     range/unit  reduce
=============================================  ==========================================  ==========  ======
``<ns>/logits/softmax_collapse_frac``          rows whose exp-sum rounds to 1 in the loss   [0, 1]      sum
                                               dtype τ (absorption test, A1)
``<ns>/logits/softmax_collapse_frac_fp64``     the same test in float64 (the paper's        [0, 1]      sum
                                               counterfactual; with ``fp64``)
``<ns>/logits/zero_loss_frac``                 rows whose τ cross-entropy is exactly 0 (A2) [0, 1]      sum
``<ns>/logits/loss_nats``                      mean τ cross-entropy: the training loss      nats >= 0   sum
``<ns>/logits/norm_mean``                      mean L2 norm of a logit row                 logit units sum
``<ns>/logits/norm_max``                       max L2 norm of a logit row                  logit units max
``<ns>/logits/max_mean``                       mean of the row maximum                     logit units sum
``<ns>/logits/gap_mean_nats``                  mean top1-top2 gap                          nats        sum
``<ns>/logits/gap_frac_absorbable``            rows with gap >= (p_τ+1)·ln2                 [0, 1]      sum
``<ns>/logits/absorb_gap_nats``                gap at which a row with V-1 equal others     nats        -
                                               collapses, measured on this device in τ
``<ns>/logits/gap_frac_near_absorb``           rows with gap >= absorb_gap - ``margin``     [0, 1]      sum
                                               (logit-scale precursor)
``<ns>/logits/accuracy_frac``                  rows whose argmax is the target              [0, 1]      sum
``<ns>/logits/log_z_mean``                     mean log-partition log Z = logsumexp (A8)    nats        sum
``<ns>/logits/log_z_abs_mean``                 mean |log Z|                                 nats        sum
``<ns>/logits/log_z_abs_max``                  max |log Z|                                  nats        max
=============================================  ==========================================  ==========  ======

Alerts: ``softmax_collapse`` (critical, above 0.5 for 2 evaluations), ``softmax_collapse_warning`` (above 0.01),
``logit_scale_precursor`` (warning: ``gap_frac_near_absorb`` rising by > 0.01 per evaluation over 5 evaluations
while ``accuracy_frac`` >= 0.99), ``log_z_drift`` (info: ``log_z_abs_mean`` rising by > ``log_z_slope`` nats per
evaluation over 5 evaluations; Wortsman et al.'s output-logit divergence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mechmon.adapters.base import LOGITS, Adapter
from mechmon.alerts import Compound, Rule, Threshold, Trend
from mechmon.checks import fail, integer, number
from mechmon.functional.logits import (
    absorption_gap,
    flatten_rows,
    loss_dtype_for,
    measured_absorption_gap,
    row_chunks,
    row_stats,
)
from mechmon.probe import StreamingProbe

__all__ = ["LogitsProbe", "default_targets", "FP64_AUTO_VOCAB"]

FP64_AUTO_VOCAB = 4096  # fp64=None: the float64 test on for vocabularies up to this (algorithmic tasks), off above

TargetsFn = Callable[[Any], tuple[Tensor, bool]]


def default_targets(batch: Any) -> tuple[Tensor, bool]:
    """Targets and whether to shift them, from a training batch (see the module docstring).

    Raises:
        TypeError: if the batch has no recognisable targets.
    """
    if isinstance(batch, Tensor):
        return batch, True
    if isinstance(batch, Mapping) and ("labels" in batch or "input_ids" in batch):
        return (batch["labels"] if "labels" in batch else batch["input_ids"]), True
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1], False
    raise TypeError(
        f"LogitsProbe cannot find targets in a {type(batch).__name__} batch; pass targets=fn(batch) -> (targets, shift)"
    )


class LogitsProbe(StreamingProbe):
    """Softmax-collapse fraction, zero-loss fraction and logit scale on training logits (docs/metrics.md A1-A3).

    Args:
        loss_dtype: τ, the dtype in which the training loss computes its log-sum-exp; ``None`` infers it from the
            logits (:func:`~mechmon.functional.logits.loss_dtype_for`: float32 for bf16/fp16 logits, as autocast and
            HF's loss compute it; the logits' dtype otherwise). Never set it wider than the real loss dtype.
        targets: ``fn(batch) -> (targets, shift)``; defaults to :func:`default_targets`.
        ignore_index: target id of rows to skip (padding).
        collapse_level: the paper's mark for the critical alert (0.5).
        warning_level: earlier warning level (0.01).
        margin: nats below the measured absorption gap that count as "near" for the precursor (> 0). Real rows
            collapse below the measured gap (it is the equal-others worst case), so the margin must be wide enough
            to lead: 6 nats (other terms within a factor e^6 of absorption) led collapse on the grokking example.
        log_z_slope: nats per evaluation by which ``log_z_abs_mean`` must rise for ``log_z_drift`` (0.5).
        fp64: also log ``softmax_collapse_frac_fp64``, the collapse test run in float64 (one float64 pass over the
            logits: about 3x the probe's own cost). ``None`` (default): on for vocabularies of at most
            :data:`FP64_AUTO_VOCAB` classes (the paper's algorithmic tasks), off for language-model vocabularies.
        shadow_rows: when the training forward makes no full logits (a fused or chunked LM head: TRL's
            ``fused_lm_head``), the values come from an eager ``no_grad`` forward of the first ``shadow_rows`` rows of
            the scheduled step's first micro-batch, with the weights that step trained with (>= 1; 8).
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Logits ``[B, T, V]`` or ``[N, C]``; targets ``[B, T]`` or ``[N]``.

    Raises:
        ValueError: on levels outside (0, 1) or ``warning_level >= collapse_level``.
        TypeError: if ``loss_dtype`` is not a floating dtype.

    Example:
        >>> LogitsProbe(loss_dtype=torch.float32).name
        'logits'
    """

    name = "logits"
    headline = "softmax_collapse_frac"
    unmeasured_hint = (
        "no full logits reached it: a compiled training forward hides them, and a loop that computes its loss from "
        "the backbone's hidden states without calling the model gives its shadow forward (shadow_rows) nothing to "
        "follow; train through the model's forward, or uncompiled"
    )
    requires = (LOGITS,)

    def __init__(
        self,
        loss_dtype: torch.dtype | None = None,
        targets: TargetsFn | None = None,
        ignore_index: int = -100,
        collapse_level: float = 0.5,
        warning_level: float = 0.01,
        margin: float = 6.0,
        log_z_slope: float = 0.5,
        fp64: bool | None = None,
        shadow_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss_dtype is not None and (not isinstance(loss_dtype, torch.dtype) or not loss_dtype.is_floating_point):
            raise TypeError(f"loss_dtype must be a floating torch.dtype such as torch.float32, got {loss_dtype!r}")
        if targets is not None and not callable(targets):
            fail("LogitsProbe", "targets", targets, "a callable batch -> target ids, or None", TypeError)
        integer("LogitsProbe", "ignore_index", ignore_index)
        number("LogitsProbe", "collapse_level", collapse_level, 0, 1)
        number("LogitsProbe", "warning_level", warning_level, 0, collapse_level)
        number("LogitsProbe", "margin", margin, 0)
        number("LogitsProbe", "log_z_slope", log_z_slope, 0, closed=(True, False))
        self.log_z_slope = float(log_z_slope)
        if fp64 is not None and not isinstance(fp64, bool):
            fail("LogitsProbe", "fp64", fp64, "True, False or None (on for vocabularies up to 4,096)", TypeError)
        self.fp64, self._fp64 = fp64, fp64
        self.shadow_rows = integer("LogitsProbe", "shadow_rows", shadow_rows, 1)
        self.loss_dtype, self.targets, self.ignore_index = loss_dtype, targets or default_targets, ignore_index
        self.collapse_level, self.warning_level, self.margin = collapse_level, warning_level, float(margin)
        self._absorb: tuple[tuple[int, torch.dtype], Tensor] | None = None
        counts = ("rows", "collapsed", "collapsed_fp64", "zero_loss", "absorbable", "near_absorb", "correct")
        for name in counts:
            self.add_state(name, torch.zeros((), dtype=torch.int64), "sum")
        for name in ("norm_sum", "max_sum", "gap_sum", "log_z_sum", "log_z_abs_sum", "loss_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.float64), "sum")
        self.add_state("norm_max", torch.zeros(()), "max")
        self.add_state("log_z_abs_max", torch.zeros(()), "max")

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Decide the float64 test from the vocabulary (``fp64=None``)."""
        vocab = getattr(adapter, "vocab_size", None)
        self._fp64 = self.fp64 if self.fp64 is not None or not vocab else vocab <= FP64_AUTO_VOCAB

    def update(self, captures: Mapping[str, Tensor], batch: Any) -> None:
        """Accumulate counts and sums from one micro-batch's logits and targets, a chunk of rows at a time.

        The logits are read as a view; each chunk's statistics come from one exponential pass
        (:func:`~mechmon.functional.logits.row_stats`) whose temporaries stay within 64 MiB plus 10 % of the logits'
        bytes (:func:`~mechmon.functional.logits.row_chunks`).
        """
        targets, shift = self.targets(batch)
        logits_NV, targets_N, valid_N = flatten_rows(captures[LOGITS], targets, shift, self.ignore_index)
        tau = self.loss_dtype or loss_dtype_for(logits_NV.dtype)
        if self._fp64 is None:  # not set up (a direct update): decided by this vocabulary
            self._fp64 = logits_NV.shape[-1] <= FP64_AUTO_VOCAB
        size = logits_NV.element_size() * logits_NV.numel()
        step = row_chunks(logits_NV.shape[0], logits_NV.shape[-1], size)
        self.rows += valid_N.sum()
        for start in range(0, logits_NV.shape[0], step):
            rows = slice(start, start + step)
            self._update_rows(logits_NV[rows], targets_N[rows], valid_N[rows], tau)

    def _update_rows(self, logits_RV: Tensor, targets_R: Tensor, valid_R: Tensor, tau: torch.dtype) -> None:
        row = row_stats(logits_RV, targets_R, tau, fp64=bool(self._fp64))
        gap_R, norm_R, log_z_R = row["gap"], torch.where(valid_R, row["norm"], 0), torch.where(valid_R, row["log_z"], 0)
        self.collapsed += (row["collapsed"] & valid_R).sum()
        if "collapsed_fp64" in row:
            self.collapsed_fp64 += (row["collapsed_fp64"] & valid_R).sum()
        self.zero_loss += ((row["loss"] == 0) & valid_R).sum()
        self.loss_sum += torch.where(valid_R, row["loss"], 0).sum(dtype=torch.float64)
        self.absorbable += ((gap_R >= absorption_gap(tau)) & valid_R).sum()
        near = gap_R >= self._absorb_gap(logits_RV.shape[-1], tau, logits_RV.device) - self.margin
        self.near_absorb += (near & valid_R).sum()
        self.correct += (row["correct"] & valid_R).sum()
        self.norm_sum += norm_R.sum(dtype=torch.float64)
        self.max_sum += torch.where(valid_R, row["max"], 0).sum(dtype=torch.float64)
        self.gap_sum += torch.where(valid_R, gap_R, 0).sum(dtype=torch.float64)
        self.norm_max.copy_(torch.maximum(self.norm_max, norm_R.amax()))
        self.log_z_sum += log_z_R.sum(dtype=torch.float64)
        self.log_z_abs_sum += log_z_R.abs().sum(dtype=torch.float64)
        self.log_z_abs_max.copy_(torch.maximum(self.log_z_abs_max, log_z_R.abs().amax()))

    def _absorb_gap(self, vocab: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Measured once per (V, τ) on the training device, then cached (a device tensor, no sync)."""
        if self._absorb is None or self._absorb[0] != (vocab, dtype):
            self._absorb = ((vocab, dtype), measured_absorption_gap(vocab, dtype, device))
        return self._absorb[1]

    def compute(self) -> dict[str, Tensor]:
        """Fractions and means from the reduced counts (NaN when no row was seen, e.g. hooks that never fired)."""
        rows = torch.where(self.rows > 0, self.rows.double(), float("nan"))
        measured = {self.key("absorb_gap_nats"): self._absorb[1]} if self._absorb is not None else {}
        if self._fp64:
            measured[self.key("softmax_collapse_frac_fp64")] = self.collapsed_fp64 / rows
        return measured | {
            self.key("softmax_collapse_frac"): self.collapsed / rows,
            self.key("zero_loss_frac"): self.zero_loss / rows,
            self.key("loss_nats"): self.loss_sum / rows,
            self.key("norm_mean"): self.norm_sum / rows,
            self.key("norm_max"): torch.where(self.rows > 0, self.norm_max, float("nan")),
            self.key("max_mean"): self.max_sum / rows,
            self.key("gap_mean_nats"): self.gap_sum / rows,
            self.key("gap_frac_absorbable"): self.absorbable / rows,
            self.key("gap_frac_near_absorb"): self.near_absorb / rows,
            self.key("accuracy_frac"): self.correct / rows,
            self.key("log_z_mean"): self.log_z_sum / rows,
            self.key("log_z_abs_mean"): self.log_z_abs_sum / rows,
            self.key("log_z_abs_max"): torch.where(self.rows > 0, self.log_z_abs_max, float("nan")),
        }

    def default_rules(self) -> list[Rule]:
        """Softmax collapse (critical), its early warning, and the logit-scale precursor.

        Collapse: above ``collapse_level`` for 2 evaluations. Precursor: the near-absorption fraction rising while
        train accuracy is about 1.
        """
        frac = self.key("softmax_collapse_frac")
        return [
            Threshold(frac, self.collapse_level, patience=2, name="softmax_collapse", severity="critical"),
            Threshold(frac, self.warning_level, patience=1, name="softmax_collapse_warning", severity="warning"),
            Compound(
                [
                    Trend(self.key("gap_frac_near_absorb"), window=5, min_slope=0.01),
                    Threshold(self.key("accuracy_frac"), 0.99),
                ],
                name="logit_scale_precursor",
            ),
            Trend(
                self.key("log_z_abs_mean"), window=5, min_slope=self.log_z_slope, name="log_z_drift", severity="info"
            ),
        ]
