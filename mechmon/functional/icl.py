"""In-context-learning score: the loss late in a context minus the loss early in it (docs/metrics.md D5).

Olsson et al., *In-context Learning and Induction Heads* (2022): ICL = ℓ(500) − ℓ(50), the mean loss on the 500th
token minus that on the 50th (1-based; "the choice of token indices is arbitrary"), averaged over contexts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["token_loss_sums"]


def token_loss_sums(logits_BTV: Tensor, tokens_BT: Tensor, real_BT: Tensor, token: int, window: int = 0) -> Tensor:
    """``[2]`` fp32: the summed loss on tokens ``token - window .. token + window`` (1-based), and their count.

    The t-th token is predicted by the logits at position t − 2 (0-based); it counts when it is a real token.
    Only those positions' logits are read (``[B, 2w+1, V]``), never the whole ``[B, T, V]`` in float32.

    Raises:
        ValueError: if the window reaches before the 2nd token or past the sequence.
    """
    first, last = token - window, token + window
    if first < 2 or last > tokens_BT.shape[1]:
        raise ValueError(f"tokens {first}..{last} do not fit a sequence of {tokens_BT.shape[1]} (need 2 <= t <= T)")
    logits = logits_BTV[:, first - 2 : last - 1].float()
    targets = tokens_BT[:, first - 1 : last]
    real = real_BT[:, first - 1 : last].bool()
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    return torch.stack([torch.where(real, ce, 0.0).sum(), real.sum().float()])
