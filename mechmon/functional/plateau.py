"""Loss-plateau formulas: position selection, loss at positions, repetition frequency, attention progress.

Source: Gopalani & Hu, *What Happens During the Loss Plateau? Understanding Abrupt Learning in Transformers*
(NeurIPS 2025); docs/metrics.md C3, C4. Legend: B batch, T positions, G generated/output tokens, H heads,
Q query positions, K key positions, V vocabulary. Pure functions: no hooks, no state, no host syncs; inputs are
never mutated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["select_positions", "loss_at_positions", "repetition_frac", "attention_progress"]


def select_positions(
    attention_mask_BT: Tensor, positions: Sequence[int] | None = None, exclude_first: bool = True
) -> Tensor:
    """Bool ``[B, T]`` mask of the positions a measure uses.

    Args:
        attention_mask_BT: 1/True for real tokens, 0/False for padding.
        positions: explicit positions (e.g. the output-predicting positions of a task); ``None`` keeps every
            position.
        exclude_first: drop position 0 (the BOS / attention sink) when ``positions`` is ``None``.

    Returns:
        bool ``[B, T]``: selected and not padding.

    Raises:
        ValueError: if a position lies outside ``[0, T)``.
    """
    real_BT = attention_mask_BT.bool()
    T = real_BT.shape[1]
    if positions is None:
        chosen_T = torch.ones(T, dtype=torch.bool, device=real_BT.device)
        chosen_T[0] = not exclude_first
    else:
        bad = [p for p in positions if not 0 <= p < T]
        if bad:
            raise ValueError(f"positions {bad} lie outside [0, {T}) for sequences of length {T}")
        chosen_T = torch.zeros(T, dtype=torch.bool, device=real_BT.device)
        chosen_T[list(positions)] = True
    return real_BT & chosen_T


def loss_at_positions(logits_BTV: Tensor, tokens_BT: Tensor, mask_BT: Tensor, attention_mask_BT: Tensor) -> Tensor:
    """Summed next-token cross-entropy at the selected positions, and their count, fp32 ``[2]``.

    Position t predicts ``tokens[t + 1]``; it counts when ``mask[t]`` holds and ``t + 1`` is a real token.

    Args:
        logits_BTV: teacher-forced logits ``[B, T, V]``.
        tokens_BT: the input ids ``[B, T]``.
        mask_BT: bool ``[B, T]`` from :func:`select_positions`.
        attention_mask_BT: 1/True for real tokens.

    Returns:
        ``[sum of losses in nats, count]``.
    """
    use_BT = mask_BT[:, :-1] & attention_mask_BT[:, 1:].bool()
    ce = F.cross_entropy(logits_BTV[:, :-1].float().flatten(0, 1), tokens_BT[:, 1:].flatten(), reduction="none")
    use = use_BT.flatten()
    return torch.stack([(ce * use).sum(), use.sum().float()])


def repetition_frac(tokens_BG: Tensor) -> Tensor:
    """Repetition frequency ρ: the share of consecutive equal tokens (C3).

    ρ = 1/(B(G−1)) Σ_b Σ_{i<G} [y_{b,i} = y_{b,i+1}], on greedy outputs (the model) or ground truth (the data).

    Args:
        tokens_BG: token ids ``[B, G]``, ``G >= 2``.

    Returns:
        fp32 0-d in [0, 1].
    """
    return (tokens_BG[:, 1:] == tokens_BG[:, :-1]).float().mean()


def attention_progress(pattern_BHQK: Tensor, target_BQK: Tensor, rows_BQ: Tensor) -> Tensor:
    """Attention progress measure per sequence (C4): the share of attention mass on the target map.

    APM_b = Σ_{h, q∈R, k} |A_b[h,q,k]|·Ω[q,k] / Σ_{h, q∈R, k} |A_b[h,q,k]|; the absolute value serves linear
    attention, for softmax attention |A| = A.

    Args:
        pattern_BHQK: attention scores ``[B, H, T, T]``.
        target_BQK: the task's optimal map Ω, 0/1 ``[T, T]`` or ``[B, T, T]``.
        rows_BQ: bool ``[B, T]`` (or ``[T]``), the query rows R.

    Returns:
        fp32 ``[B]`` in [0, 1] (0 where the rows carry no attention).
    """
    mass_BQK = pattern_BHQK.float().abs().sum(dim=1) * rows_BQ.unsqueeze(-1)
    on_target_B = (mass_BQK * target_BQK.float()).sum(dim=(1, 2))
    return on_target_B / mass_BQK.sum(dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)
