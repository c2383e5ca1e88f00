"""MoE routing health formulas: routing entropy and expert load (docs/metrics.md B4).

Legend: N tokens (B·T flattened, as HF routers return them), E experts, k experts selected per token, L MoE layers.
Definitions match transformers' ``MoERouterHealthCallback`` and torchtitan's ``tokens_per_expert`` counters; Li,
Fan & Zhou, *Where to find Grokking in LLM Pretraining?* (ICLR 2026) App. E.5 use the entropy as a health metric.
Pure functions: no hooks, no state, no host syncs (no ``bincount``, which syncs on CUDA); inputs are never mutated.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mechmon.functional.logits import row_chunks

__all__ = ["routing_entropy", "expert_counts", "load_stats"]


def routing_entropy(router_logits_NE: Tensor) -> Tensor:
    """Sum over tokens of the normalised entropy of the full routing softmax, and the token count, fp32 ``[2]``.

    H_t = −Σ_e g_e log g_e / log E with g = softmax(logits) in fp32; the mean is ``sum / count`` in [0, 1]
    (1 = uniform routing, 0 = one expert takes all the weight). Rows are taken a chunk at a time, so the
    temporaries stay within 64 MiB plus 10 % of the logits' bytes (:func:`~mechmon.functional.logits.row_chunks`).

    Args:
        router_logits_NE: pre-softmax router logits ``[N, E]``, ``E >= 2``.
    """
    N, E = router_logits_NE.shape
    step = row_chunks(N, E, router_logits_NE.numel() * router_logits_NE.element_size())
    total = router_logits_NE.new_zeros((), dtype=torch.float32)
    for start in range(0, N, step):
        logp = F.log_softmax(router_logits_NE[start : start + step].float(), dim=-1)
        total = total + (logp.exp() * logp).sum()
    return torch.stack([-total / math.log(E), total.new_full((), N)])  # new_full: a fill kernel, no host copy


def expert_counts(indices_Nk: Tensor, n_experts: int) -> Tensor:
    """Tokens routed to each expert, int64 ``[E]``, from the router's selected indices ``[N, k]``.

    Added in place into ``[E]`` from an expanded (zero-stride) source, so nothing of size ``N·k·E`` is built.
    """
    flat = indices_Nk.reshape(-1).long()
    ones = torch.ones((), dtype=torch.int64, device=flat.device).expand(flat.numel())
    return torch.zeros(n_experts, dtype=torch.int64, device=flat.device).index_add_(0, flat, ones)


def load_stats(counts_LE: Tensor) -> dict[str, Tensor]:
    """Expert-load statistics per layer from assignment counts ``[L, E]``.

    Returns:
        fp32 ``[L]`` each: ``load_cv`` (std/mean of the load f = counts / total, population std; 0 = balanced),
        ``max_load_ratio`` (E·max f in [1, E/k]), ``effective_experts`` (exp of the load's entropy, in [1, E]) and
        ``dead`` (experts with no assignment).
    """
    f_LE = counts_LE.float() / counts_LE.sum(dim=-1, keepdim=True).clamp_min(1)
    E = counts_LE.shape[-1]
    mean = f_LE.mean(dim=-1)
    entropy = -(f_LE * f_LE.clamp_min(torch.finfo(torch.float32).tiny).log()).sum(dim=-1)
    return {
        "load_cv": f_LE.std(dim=-1, correction=0) / mean.clamp_min(torch.finfo(torch.float32).tiny),
        "max_load_ratio": E * f_LE.max(dim=-1).values,
        "effective_experts": entropy.exp(),
        "dead": (counts_LE == 0).sum(dim=-1).float(),
    }
