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

__all__ = ["sdpa_probabilities"]


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
    q, k = query_BHQD.float(), key_BHkKD.float()
    if k.shape[-3] != q.shape[-3]:
        if not enable_gqa and k.shape[-3] != 1 or q.shape[-3] % k.shape[-3]:
            raise ValueError(f"query heads {q.shape[-3]} are not a multiple of key heads {k.shape[-3]}")
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores_BHQK = (q @ k.transpose(-2, -1)) * scale
    Q, K = scores_BHQK.shape[-2:]
    if is_causal:
        allowed_QK = torch.ones(Q, K, dtype=torch.bool, device=q.device).tril()
        scores_BHQK = scores_BHQK.masked_fill(~allowed_QK, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores_BHQK = scores_BHQK.masked_fill(~attn_mask, float("-inf"))
        else:
            scores_BHQK = scores_BHQK + attn_mask.float()
    return torch.softmax(scores_BHQK, dim=-1)
