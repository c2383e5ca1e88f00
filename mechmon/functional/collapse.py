"""Representation-collapse formulas: mean pairwise cosine and effective rank of hidden states (docs/metrics.md C1, C2).

Legend: B batch, T positions, D hidden width, L layers. ``mask_BT`` marks the positions that enter a measure
(padding, position 0 / BOS and any user exclusions already removed). A Gram "with ones" is
``Σ z̃ z̃ᵀ`` over the selected tokens, ``z̃ = [z, 1]``: its blocks hold ``ZᵀZ`` ``[D, D]``, ``Σz`` ``[D]`` and the
token count, so one sum reduces all three across ranks.
Pure functions: no hooks, no state, no host syncs; inputs are never mutated.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mean_pairwise_cosine", "gram_with_ones", "effective_rank", "participation_ratio"]


def mean_pairwise_cosine(hidden_BTD: Tensor, mask_BT: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sequence mean cosine similarity over all pairs of selected positions (C1, teacher-forced form).

    Gopalani & Hu, *What Happens During the Loss Plateau? Understanding Abrupt Learning in Transformers* (2025).
    With unit vectors u_i, the mean over the m(m-1)/2 pairs j < i equals (‖Σ u_i‖² − m) / (m(m−1)), so no
    ``[T, T]`` Gram is formed.

    Args:
        hidden_BTD: hidden states ``[B, T, D]`` (any float dtype; normalised in fp32).
        mask_BT: bool ``[B, T]``, the positions that enter the mean.

    Returns:
        ``(cos_B, valid_B)``: fp32 ``[B]`` means in [-1, 1] (0 where invalid) and bool ``[B]``, True where a sequence
        has at least two selected positions.
    """
    unit_BTD = F.normalize(hidden_BTD.float(), dim=-1) * mask_BT.unsqueeze(-1)
    m_B = mask_BT.sum(dim=1).float()
    total_B = unit_BTD.sum(dim=1).square().sum(dim=-1)
    valid_B = m_B >= 2
    pairs_B = (m_B * (m_B - 1)).clamp_min(1)
    return torch.where(valid_B, (total_B - m_B) / pairs_B, torch.zeros_like(total_B)), valid_B


def gram_with_ones(hidden_BTD: Tensor, mask_BT: Tensor, projection_DK: Tensor | None = None) -> Tensor:
    """Gram matrix with ones ``Σ z̃ z̃ᵀ`` over the selected tokens (C2 streaming form), fp32 ``[K+1, K+1]``.

    Args:
        hidden_BTD: hidden states ``[B, T, D]``.
        mask_BT: bool ``[B, T]``, the tokens that enter.
        projection_DK: optional fixed projection ``[D, K]`` applied first (for wide models); ``K = D`` without it.

    Returns:
        ``[K+1, K+1]``: top-left ``ZᵀZ``, last column ``Σz`` (and count at ``[-1, -1]``).
    """
    keep_N1 = mask_BT.reshape(-1, 1)
    z_ND = hidden_BTD.float().reshape(keep_N1.shape[0], -1)
    if projection_DK is not None:
        z_ND = z_ND @ projection_DK.float()
    # caveat: rows left out are zeroed (even NaN ones), not dropped: hidden[mask] sizes its result on the host (a sync)
    z1_ND = torch.where(keep_N1, torch.cat([z_ND, torch.ones_like(z_ND[:, :1])], dim=1), 0.0)
    return z1_ND.T @ z1_ND


def _split(gram: Tensor, centered: bool) -> Tensor:
    """Second-moment block of a Gram with ones, centered on the mean when asked."""
    g = gram.double()
    zz, s, n = g[..., :-1, :-1], g[..., :-1, -1], g[..., -1, -1].clamp_min(1)
    if not centered:
        return zz
    return zz - s.unsqueeze(-1) * s.unsqueeze(-2) / n[..., None, None]


def effective_rank(gram: Tensor, centered: bool = False, eps: float = 1e-5) -> Tensor:
    """RankMe effective rank from a Gram with ones, batched over leading dimensions (C2).

    Garrido et al., *RankMe: Assessing the Downstream Performance of Pretrained Self-Supervised Representations by
    Their Rank* (ICML 2023), after Roy & Vetterli (2007): σ are the singular values of Z (√ of the eigenvalues of
    ZᵀZ, in fp64), p_k = σ_k / Σσ + ε, RankMe = exp(−Σ p_k log p_k). Only the top min(N, K) eigenvalues are
    singular values of Z (min(N − 1, K) when centered): with fewer tokens than dimensions the others are zeros up to
    rounding, and keeping them (with their ε) would add 0.1-5 % to the rank.

    Args:
        gram: ``[..., K+1, K+1]`` from :func:`gram_with_ones` (summed over batches or ranks).
        centered: subtract the mean first (RankMe itself is uncentered, the default).
        eps: the ε of RankMe (1e-5, as stable-pretraining's callback).

    Returns:
        fp64 ``[...]`` in [1, min(N, K)] (slightly above with ε); NaN with fewer than 2 tokens.
    """
    lam = torch.linalg.eigvalsh(_split(gram, centered)).clamp_min(0)  # ascending
    K = lam.shape[-1]
    n = gram.double()[..., -1, -1] - float(centered)  # Z [N, K]: min(N, K) singular values; centered: min(N - 1, K)
    kept = torch.arange(K, device=lam.device) >= K - n.clamp(0, K).unsqueeze(-1)  # caveat: the K - N others are 0
    sigma = torch.where(kept, lam.sqrt(), 0.0)
    p = torch.where(kept, sigma / sigma.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(sigma.dtype).tiny) + eps, 1.0)
    rank = torch.exp(-(p * p.log()).sum(dim=-1))
    return torch.where(n >= 1 + float(not centered), rank, float("nan"))  # one token (or none) has no rank to measure


def participation_ratio(gram: Tensor) -> Tensor:
    """Participation ratio (Σλ)² / Σλ² of the centered covariance, from a Gram with ones (C2, derived).

    Equals ``tr(C)² / ‖C‖_F²``, so no eigendecomposition is needed.

    Args:
        gram: ``[..., K+1, K+1]`` from :func:`gram_with_ones`.

    Returns:
        fp64 ``[...]`` in [1, K]; NaN with fewer than 2 tokens.
    """
    cov = _split(gram, centered=True)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    frob = cov.square().sum(dim=(-2, -1))
    ratio = trace.square() / frob.clamp_min(torch.finfo(frob.dtype).tiny)
    return torch.where(gram.double()[..., -1, -1] >= 2, ratio, float("nan"))  # one token has no covariance
