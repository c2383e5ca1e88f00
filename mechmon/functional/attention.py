"""Attention probabilities recomputed from the inputs of a ``scaled_dot_product_attention`` call.

Legend: B batch, H query heads, Hk key/value heads, Q query positions, K key positions, D head width.

Fast attention (SDPA, flash) never materialises the probabilities that pattern probes read. The probe forward
intercepts each ``torch.nn.functional.scaled_dot_product_attention`` call and recomputes them here from that call's
own query, key, mask, scale and causal flag, in float32, exactly as PyTorch documents the operation
(``softmax(q kᵀ · scale + bias)``). Training forwards never come here.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "ENTROPY",
    "FIRST_MASS",
    "MAX_LOGIT",
    "VISIBLE",
    "check_queries",
    "probability_row_stats",
    "row_stats",
    "sdpa_probabilities",
    "sdpa_row_stats",
    "sdpa_scores",
]


def sdpa_scores(
    query_BHQD: Tensor,
    key_BHkKD: Tensor,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    rows: slice | None = None,
) -> Tensor:
    """The pre-softmax attention logits ``[B, H, q, K]`` (float32) of query rows ``rows`` of one SDPA call.

    ``scale · q kᵀ`` plus an additive float mask (ALiBi and other biases included); positions a query may not attend
    to are ``-inf``: a False entry of a boolean mask, the causal upper triangle, or an additive entry at or below
    half the mask dtype's most negative value (the "minus infinity" HF writes as ``finfo.min``). Arguments as in
    :func:`sdpa_probabilities`; ``rows`` (default all) selects a chunk of queries so that callers can bound memory.

    Raises:
        ValueError: if ``H`` is not a multiple of ``Hk``.
    """
    rows = slice(None) if rows is None else rows
    q, k = query_BHQD[..., rows, :].float(), key_BHkKD.float()
    if k.shape[-3] != q.shape[-3]:
        if not enable_gqa and k.shape[-3] != 1 or q.shape[-3] % k.shape[-3]:
            raise ValueError(f"query heads {q.shape[-3]} are not a multiple of key heads {k.shape[-3]}")
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores_BHqK = (q @ k.transpose(-2, -1)) * scale
    first, (nq, K) = rows.indices(query_BHQD.shape[-2])[0], scores_BHqK.shape[-2:]
    if is_causal:  # top-left aligned, as PyTorch's reference: query i sees keys j <= i
        i_q1 = torch.arange(first, first + nq, device=q.device)[:, None]
        scores_BHqK = scores_BHqK.masked_fill(torch.arange(K, device=q.device) > i_q1, float("-inf"))
    if attn_mask is not None:
        mask = attn_mask if attn_mask.shape[-2] == 1 else attn_mask[..., rows, :]
        if mask.dtype == torch.bool:
            scores_BHqK = scores_BHqK.masked_fill(~mask, float("-inf"))
        else:
            blocked = mask <= torch.finfo(mask.dtype).min / 2
            scores_BHqK = (scores_BHqK + mask.float()).masked_fill(blocked, float("-inf"))
    return scores_BHqK


def sdpa_probabilities(
    query_BHQD: Tensor,
    key_BHkKD: Tensor,
    value: Tensor | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> Tensor:
    """The attention probabilities ``[B, H, Q, K]`` (float32) of one SDPA call, with that call's arguments.

    Args:
        query_BHQD: queries ``[..., H, Q, D]``.
        key_BHkKD: keys ``[..., Hk, K, D]``; ``Hk`` divides ``H`` when ``enable_gqa`` (grouped-query attention).
        value: ignored (kept so the call's own positional arguments can be passed through unchanged).
        attn_mask: boolean (True = may attend) or additive float mask broadcastable to ``[B, H, Q, K]``.
        dropout_p: ignored: probe forwards run in eval mode, and the pattern before dropout is the one of interest.
        is_causal: apply the top-left-aligned causal mask of PyTorch's reference implementation.
        scale: score scale; ``1/sqrt(D)`` when ``None``.
        enable_gqa: repeat each key head ``H // Hk`` times, as SDPA does.

    Returns:
        Probabilities in [0, 1], each row summing to 1 (NaN for a row that may attend to nothing, as SDPA).

    Raises:
        ValueError: if ``H`` is not a multiple of ``Hk``.
    """
    return torch.softmax(sdpa_scores(query_BHQD, key_BHkKD, attn_mask, is_causal, scale, enable_gqa), dim=-1)


def check_queries(tensor: Tensor, T: int, name: str) -> Tensor:
    """``tensor`` (a pattern ``[B, H, Q, K]`` or row statistics ``[B, H, Q, 4]``) if ``Q`` is the batch's ``T``.

    Raises:
        ValueError: otherwise: the module is not softmax attention over the probe batch (a linear-attention layer of
            a hybrid model returns its ``[B, H, d, d]`` state in the weights' place).
    """
    if tensor.ndim != 4 or tensor.shape[-2] != T:
        raise ValueError(
            f"{name} is {tuple(tensor.shape)}, not [B, H, {T}, ...] for the {T}-token probe batch: that attention "
            "module is not softmax attention over the tokens (e.g. a linear-attention layer of a hybrid model)"
        )
    return tensor


MAX_LOGIT, ENTROPY, VISIBLE, FIRST_MASS = range(4)  # the last axis of row statistics


def row_stats(scores_BHQK: Tensor) -> Tensor:
    """Per attention row: ``[B, H, Q, 4]`` float32 = (max logit, entropy in nats, visible keys, mass on key 0).

    ``scores_BHQK`` are pre-softmax logits with ``-inf`` where a query may not attend. A row with no visible key
    has max logit ``-inf``, entropy 0, 0 visible keys and mass 0 (callers drop it by its count). Entropy
    ``-Σ p log p`` with ``0 log 0 = 0``; the mass on key 0 is the attention-sink input (Gu et al., ICLR 2025).
    """
    scores = scores_BHQK.float()
    visible = torch.isfinite(scores)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    entropy = torch.special.entr(probs).sum(dim=-1)
    return torch.stack([scores.amax(dim=-1), entropy, visible.sum(dim=-1).float(), probs[..., 0]], dim=-1)


def probability_row_stats(probs_BHQK: Tensor) -> Tensor:
    """:func:`row_stats` from probabilities alone (an attention that returns only its weights): ``[B, H, Q, 4]``.

    The max logit cannot be recovered from probabilities (softmax drops the offset): it is NaN. Keys with
    probability 0 count as not visible.
    """
    probs = probs_BHQK.float()
    entropy = torch.special.entr(probs).sum(dim=-1)
    visible = (probs > 0).sum(dim=-1).float()
    return torch.stack([torch.full_like(entropy, float("nan")), entropy, visible, probs[..., 0]], dim=-1)


def sdpa_row_stats(
    query_BHQD: Tensor,
    key_BHkKD: Tensor,
    value: Tensor | None = None,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    chunk: int | None = None,
) -> Tensor:
    """:func:`row_stats` of one SDPA call, computed ``chunk`` queries at a time.

    At most one ``[B, H, chunk, K]`` float32 block of logits (and its softmax) exists at a time, never the whole
    ``[B, H, Q, K]``. ``chunk`` defaults to Q/8 rounded down, between 1 and 128, so the block's temporaries (about
    five copies) stay below the two ``[B, H, Q, K]`` tensors an eager attention layer holds. Arguments as in
    :func:`sdpa_probabilities`. Returns ``[B, H, Q, 4]``.
    """
    Q = query_BHQD.shape[-2]
    chunk = chunk or min(128, max(1, Q // 8))
    parts = [
        row_stats(sdpa_scores(query_BHQD, key_BHkKD, attn_mask, is_causal, scale, enable_gqa, slice(i, i + chunk)))
        for i in range(0, Q, chunk)
    ]
    return torch.cat(parts, dim=-2)
