"""Grokking-pathway formulas on MoE routing: per-sample routing weights, pathways and their edit distance (B2).

Li, Fan & Zhou, *Where to find Grokking in LLM Pretraining? Monitor Memorization-to-Generalization without Test*
(ICLR 2026), Sec. 4.1-4.2; metrics B2-B3. Legend: B samples, T tokens, E experts, L MoE layers, d width, N samples
of the probe set. The device half (:func:`sample_routing`, :func:`pathway_selection`, consistency) is vectorised and
sync-free; the host half (:func:`serialize_pathways`, :func:`mean_edit_distance`) works on numpy copies and strings, off
the training thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist
from torch import Tensor

__all__ = [
    "sample_losses",
    "sample_routing",
    "pathway_selection",
    "serialize_pathways",
    "mean_edit_distance",
    "pair_subset",
    "routing_embeddings",
    "pathway_consistency",
]


def sample_routing(router_logits_NE: Tensor, mask_BT: Tensor) -> Tensor:
    """Mean routing weights per sample over its non-pad tokens, fp32 ``[B, E]``.

    Args:
        router_logits_NE: router logits of a forward on ``[B, T]`` ids, flattened ``[B·T, E]`` as HF routers return.
        mask_BT: 1/True for real tokens.

    Returns:
        ḡ: the token mean of softmax(logits) in fp32 (the full softmax over all E, the paper's default).
    """
    B, T = mask_BT.shape
    g_BTE = torch.softmax(router_logits_NE.float(), dim=-1).reshape(B, T, -1)
    w_BT1 = mask_BT.float().unsqueeze(-1)
    return (g_BTE * w_BT1).sum(dim=1) / w_BT1.sum(dim=1).clamp_min(1)


def sample_losses(logits_BTV: Tensor, tokens_BT: Tensor, mask_BT: Tensor) -> Tensor:
    """Each sample's mean next-token NLL over its real targets, fp32 ``[B]`` (the ℓ_i of the memorization criterion).

    Args:
        logits_BTV: teacher-forced logits ``[B, T, V]``.
        tokens_BT: the input ids.
        mask_BT: 1/True for real tokens; position t counts when token t + 1 is real.
    """
    ce_BT = F.cross_entropy(logits_BTV[:, :-1].float().transpose(1, 2), tokens_BT[:, 1:], reduction="none")
    use_BT = mask_BT[:, 1:].float()
    return (ce_BT * use_BT).sum(dim=1) / use_BT.sum(dim=1).clamp_min(1)


def pathway_selection(weights_NLE: Tensor, tau: float = 0.7) -> tuple[Tensor, Tensor]:
    """Experts of each layer's pathway: ranked by weight, kept until their cumulative weight exceeds ``tau``.

    Ties go to the lower expert id (stable sort); the crossing expert is kept.

    Args:
        weights_NLE: mean routing weights ``[N, L, E]`` (rows sum to 1).
        tau: cumulative threshold in (0, 1], 0.7 in the paper.

    Returns:
        ``(order_NLE, keep_NLE)``: expert ids by descending weight (int64) and a bool mask of the kept prefix.
    """
    sorted_w, order = torch.sort(weights_NLE, dim=-1, descending=True, stable=True)
    keep = (sorted_w.cumsum(dim=-1) - sorted_w) <= tau
    return order, keep


def serialize_pathways(order_NLE: np.ndarray, keep_NLE: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """Pathway strings: experts comma-separated within a layer, layers joined by hyphens (host side).

    Returns:
        ``(pathways, per_layer)``: N strings like ``"3,1,5-0,2"`` and, per layer, the N layer substrings.
    """
    N, L, _ = order_NLE.shape
    per_layer = [[",".join(map(str, order_NLE[i, layer][keep_NLE[i, layer]])) for i in range(N)] for layer in range(L)]
    return ["-".join(per_layer[layer][i] for layer in range(L)) for i in range(N)], per_layer


def pair_subset(n: int, max_pairs: int, seed: int = 0) -> np.ndarray | None:
    """A fixed seeded subset of pairs i < j (``[P, 2]``) when ``n(n-1)/2 > max_pairs``, else ``None`` (all pairs)."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        return None
    rng = np.random.default_rng(seed)
    i, j = np.triu_indices(n, k=1)
    pick = np.sort(rng.choice(total, size=max_pairs, replace=False))
    return np.stack([i[pick], j[pick]], axis=1)


def mean_edit_distance(strings: Sequence[str], pairs: np.ndarray | None = None) -> float:
    """Mean character-level Levenshtein distance over all pairs i < j, or over ``pairs`` ``[P, 2]`` (rapidfuzz).

    Returns:
        The mean distance in characters (NaN with fewer than two strings).
    """
    if len(strings) < 2:
        return float("nan")
    if pairs is None:
        matrix = cdist(strings, strings, scorer=Levenshtein.distance, dtype=np.int32, workers=1)
        return float(matrix[np.triu_indices(len(strings), k=1)].mean())
    return float(np.mean([Levenshtein.distance(strings[i], strings[j]) for i, j in pairs]))


def routing_embeddings(weights_NLE: Tensor, router_LED: Tensor) -> Tensor:
    """Routing embeddings e^ℓ_i = Σ_k ḡ_{ℓ,i,k} W^ℓ[k], the routing-weighted sum of router rows, fp32 ``[N, L, d]``.

    Args:
        weights_NLE: mean routing weights per sample and layer ``[N, L, E]``.
        router_LED: each MoE layer's router weight matrix ``W^ℓ`` ``[L, E, d]`` (row k = expert k's embedding).
    """
    return torch.einsum("nle,led->nld", weights_NLE.float(), router_LED.float())


def pathway_consistency(embed_NLD: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Both forms of pathway consistency from adjacent-layer cosines of the routing embeddings (docs/metrics.md B3).

    With c_ℓ = cos(e^ℓ_i, e^{ℓ+1}_i) for ℓ = 1..L-1:

    - smoothness S_i = mean_ℓ c_ℓ in [-1, 1], higher = smoother (mechmon's reading of the paper's claims);
    - the printed form C_i = 1 - mean_ℓ c_ℓ / (max_ℓ c_ℓ + 1e-8), 0 when all c_ℓ are equal (its sign is unsettled).

    Args:
        embed_NLD: routing embeddings ``[N, L, d]`` with L >= 2.
        eps: the paper's 1e-8 in the denominator (also the cosine's norm floor).

    Returns:
        ``(smoothness_N, consistency_paper_N)``, fp32 ``[N]`` each.

    Raises:
        ValueError: with fewer than two layers (no adjacent pair).
    """
    if embed_NLD.shape[1] < 2:
        raise ValueError(f"pathway consistency needs >= 2 MoE layers, got {embed_NLD.shape[1]}")
    cos_NL = F.cosine_similarity(embed_NLD[:, :-1], embed_NLD[:, 1:], dim=-1, eps=eps)
    smooth = cos_NL.mean(dim=1)
    return smooth, 1 - smooth / (cos_NL.amax(dim=1) + eps)
