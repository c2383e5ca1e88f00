"""Induction-family formulas on the repeated-random-token batch (docs/metrics.md D1, D2, D4).

Legend: B batch, H heads, Q query positions, K key positions, T sequence length, V vocabulary,
n the period (length of one copy), s the BOS offset (1 with a BOS, else 0). Copy 1 occupies positions
s..s+n-1 and copy 2 s+n..s+2n-1; for a copy-2 query q = s+n+i the induction target is q-n+1.
Pure functions: no hooks, no state, no host syncs; inputs are never mutated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "induction_scores",
    "prefix_matching_scores",
    "prev_token_scores",
    "repeated_sequence_losses",
    "repeated_tokens",
]


def induction_scores(pattern_BHQK: Tensor, period: int, offset: int = 0) -> Tensor:
    """Canonical induction score per head (D1): mean attention from copy-2 queries to their induction targets.

    I_h = 1/(B·n) Σ_b Σ_{i<n} A_b,h[s+n+i, s+i+1]. Olsson et al., *In-context Learning and Induction Heads* (2022);
    formula from TransformerLens / ARENA restricted to copy-2 rows.

    Args:
        pattern_BHQK: attention probabilities ``[B, H, T, T]``, ``T >= s + 2n``.
        period: n, the length of one copy.
        offset: s, 1 if a BOS is prepended else 0.

    Returns:
        ``[H]`` fp32 scores in [0, 1]; a perfect head scores 1, a uniform causal head ≈ ln2/n.

    Raises:
        ValueError: if the pattern is too short for two copies.
    """
    if pattern_BHQK.shape[-1] < offset + 2 * period:
        raise ValueError(f"pattern of length {pattern_BHQK.shape[-1]} is shorter than s + 2n = {offset + 2 * period}")
    i = torch.arange(period, device=pattern_BHQK.device)
    return pattern_BHQK[:, :, offset + period + i, offset + i + 1].float().mean(dim=(0, 2))


def prefix_matching_scores(pattern_BHQK: Tensor, period: int, copies: int, offset: int = 0) -> Tensor:
    """Prefix-matching score per head (D3): attention from a token to every earlier successor of its occurrences.

    For a query in copy m >= 1 at offset i, score = Σ_{c<m} A[s + m·n + i, s + c·n + i + 1]; PM_h is the mean over
    the queries of copies 1..copies-1 and over the batch. Olsson et al. (2022); implementation of Bansal et al.,
    *Rethinking the Role of Scale for In-Context Learning* (2023), ``amazon-science/llm-interpret``.

    Args:
        pattern_BHQK: attention probabilities ``[B, H, T, T]``, ``T >= s + copies·n``.
        period: n, the length of one copy.
        copies: copies in the sequence (>= 2; the reference uses 4).
        offset: s, 1 if a BOS is prepended else 0.

    Returns:
        ``[H]`` fp32 scores in [0, 1]; a perfect head scores 1.

    Raises:
        ValueError: if the pattern is too short for the copies.
    """
    if pattern_BHQK.shape[-1] < offset + copies * period:
        raise ValueError(f"pattern of length {pattern_BHQK.shape[-1]} is shorter than s + copies·n")
    i = torch.arange(period, device=pattern_BHQK.device)
    per_copy = []
    for m in range(1, copies):
        queries = offset + m * period + i
        hits = sum(pattern_BHQK[:, :, queries, offset + c * period + i + 1].float() for c in range(m))
        per_copy.append(hits)
    return torch.cat(per_copy, dim=-1).mean(dim=(0, 2))


def prev_token_scores(pattern_BHQK: Tensor, offset: int = 0) -> Tensor:
    """Previous-token score per head (D2): mean over b and q in [s+1, T) of A_b,h[q, q-1].

    Source: TransformerLens ``head_detector`` (offset -1); a precursor of induction (Singh et al., ICML 2024).

    Args:
        pattern_BHQK: attention probabilities ``[B, H, T, T]``.
        offset: s; with a BOS the query at position 1 (whose previous token is the BOS) is excluded.

    Returns:
        ``[H]`` fp32 scores in [0, 1].
    """
    q = torch.arange(offset + 1, pattern_BHQK.shape[-2], device=pattern_BHQK.device)
    return pattern_BHQK[:, :, q, q - 1].float().mean(dim=(0, 2))


def repeated_sequence_losses(
    logits_BTV: Tensor, tokens_BT: Tensor, period: int, offset: int = 0, copies: int = 2
) -> Tensor:
    """Mean fp32 next-token loss on each copy, excluding its first token (D4).

    Args:
        logits_BTV: logits ``[B, T, V]`` of the repeated batch.
        tokens_BT: the token ids ``[B, T]``.
        period: n.
        offset: s.
        copies: the copies in the batch (2 for P-rep, 4 for the prefix-matching batch).

    Returns:
        ``[copies]`` fp32 tensor in nats, copy 1 first; ``loss_rep - loss_first < 0`` when copying works.
    """
    loss_BT = F.cross_entropy(logits_BTV[:, :-1].float().transpose(1, 2), tokens_BT[:, 1:], reduction="none")
    # loss_BT[:, q] predicts token q+1; copy c's targets are s+c*n+1..s+(c+1)*n-1.
    starts = [offset + c * period for c in range(copies)]
    return torch.stack([loss_BT[:, start : start + period - 1].mean() for start in starts])


def repeated_tokens(
    batch: int,
    period: int,
    allowed_ids: Tensor,
    generator: torch.Generator,
    bos_token_id: int | None = None,
    repeat: bool = True,
    copies: int = 2,
) -> Tensor:
    """Build P-rep: ``batch`` sequences of ``period`` ids drawn without replacement, repeated ``copies`` times.

    Args:
        batch: B.
        period: n (needs ``len(allowed_ids) >= n``).
        allowed_ids: candidate ids ``[M]`` (vocabulary minus special tokens).
        generator: seeded CPU generator.
        bos_token_id: prepended when not ``None``.
        repeat: ``False`` gives the control batch (copy 2 is a fresh draw).
        copies: copies of the draw (P-rep4 of the prefix-matching score: 4).

    Returns:
        int64 ``[B, s + copies·n]`` on CPU.

    Raises:
        ValueError: if fewer than ``period`` ids are allowed.
    """
    if allowed_ids.numel() < period:
        offered = allowed_ids.numel()
        raise ValueError(f"need at least {period} usable token ids for the probe, the vocabulary offers {offered}")
    idx = torch.rand(batch, allowed_ids.numel(), generator=generator).argsort(dim=-1)
    first = allowed_ids[idx[:, :period]]
    fresh = torch.rand(batch, allowed_ids.numel(), generator=generator).argsort(dim=-1)
    second = first if repeat else allowed_ids[fresh[:, :period]]
    parts = [first, second] + [first] * (copies - 2)
    if bos_token_id is not None:
        parts.insert(0, torch.full((batch, 1), bos_token_id, dtype=torch.long))
    return torch.cat(parts, dim=1)
