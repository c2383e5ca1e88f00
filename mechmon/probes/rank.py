"""Effective-rank probe: RankMe and participation ratio of hidden states per layer (dimensional collapse).

Phenomenon: hidden states that span fewer and fewer directions. Garrido et al., *RankMe: Assessing the Downstream
Performance of Pretrained Self-Supervised Representations by Their Rank* (ICML 2023), the effective rank of Roy &
Vetterli (2007); docs/metrics.md C2. Streaming form: each forward adds the Gram matrix with ones of the selected tokens
(``[K+1, K+1]`` per layer, one sum across ranks); its eigenvalues are taken in fp64 on the host copy that
rides in the scheduled step's one transfer (CUDA eigensolvers would add a sync). RankMe is uncentered by
default (``centered=True`` subtracts the mean); the participation ratio is always centered. Widths above
``max_dim`` go through a fixed seeded Gaussian projection to ``max_dim`` dimensions (trend only).

Logged metrics (``<ns>`` = namespace, scope ``Lxx`` per layer; unscoped = final-norm hidden states):

=======================================  ====================================  ==============  ======
key                                      meaning                               range/unit      reduce
=======================================  ====================================  ==============  ======
``<ns>/repr_rank/rankme[/Lxx]``          RankMe effective rank                 [1, min(N, K)]  sum
``<ns>/repr_rank/rankme_frac[/Lxx]``     RankMe / K                            (0, 1]          sum
``<ns>/repr_rank/part_ratio[/Lxx]``      participation ratio (centered)        [1, K]          sum
=======================================  ====================================  ==============  ======

Alert: ``dimensional_collapse`` (warning) per key ``rankme[/Lxx]``, below ``ratio`` x its running max for 2
evaluations. The running max starts only once RankMe has come back 10 % above its first trough: a randomly
initialised network is close to isotropic and every run loses most of that rank in its first steps (on the stdlib
demo, RankMe 65 at step 1 and 20 at step 50; on a healthy HF run evaluated every 10 steps, 34.9 at step 10 and 14.8
at step 20), so the rule judges the rank training built, never the initialisation's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mechmon.adapters.base import FINAL_NORM, Adapter, resid_name
from mechmon.alerts import Collapse, Rule
from mechmon.checks import flag, integer, number
from mechmon.functional.collapse import effective_rank, gram_with_ones, participation_ratio
from mechmon.functional.plateau import select_positions
from mechmon.naming import layer_scope
from mechmon.probes.fixed_batch import FixedBatchProbe, check_positions, hidden_width

__all__ = ["RankProbe"]


class RankProbe(FixedBatchProbe):
    """RankMe and participation ratio of the residual stream after every block and of the final-norm states.

    Args:
        batch: fixed batch (ids ``[B, T]`` or a mapping); ``None`` takes the first training batch.
        positions: token positions that enter; ``None`` keeps every non-pad position except position 0.
        centered: center the states before RankMe (RankMe itself is uncentered).
        max_dim: widths above it are projected to it with a fixed Gaussian (>= 2).
        ratio: the dimensional-collapse alert fires below ``ratio`` x the running max (0.5).
        seed: seed of the projection.
        max_rows: rows kept from the batch.
        **kwargs: ``schedule`` and ``rules``, see :class:`~mechmon.probe.Probe`.

    Shape:
        Reads ``blocks.{l}.hook_resid_post`` and ``ln_final.hook_normalized`` ``[B, T, D]``; state ``[L+1, K+1, K+1]``
        in fp64 with ``K = min(D, max_dim)``.

    Raises:
        ValueError: on bad arguments.

    Example:
        >>> probe = RankProbe(max_dim=256)
        >>> probe.name
        'repr_rank'
    """

    name = "repr_rank"
    headline = "rankme"
    requires = ("blocks.*.hook_resid_post", FINAL_NORM)

    def __init__(
        self,
        batch: Any = None,
        positions: Sequence[int] | None = None,
        centered: bool = False,
        max_dim: int = 512,
        ratio: float = 0.5,
        seed: int = 0,
        max_rows: int = 8,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch, max_rows, **kwargs)
        self.positions = check_positions(positions, type(self).__name__)
        flag("RankProbe", "centered", centered)
        integer("RankProbe", "max_dim", max_dim, 2)
        number("RankProbe", "ratio", ratio, 0, 1)
        integer("RankProbe", "seed", seed)
        self.centered, self.max_dim, self.ratio, self.seed = centered, max_dim, ratio, seed

    def setup(self, model: nn.Module, adapter: Adapter, device: torch.device) -> None:
        """Read the width, build the projection if needed, declare the ``[L+1, K+1, K+1]`` Gram state."""
        super().setup(model, adapter, device)
        self.names = [resid_name(i) for i in range(adapter.n_layers)] + [FINAL_NORM]
        width = hidden_width(adapter, FINAL_NORM, device)
        self.dim = min(width, self.max_dim)
        self.projection = None
        if width > self.max_dim:
            gen = torch.Generator().manual_seed(self.seed)
            self.projection = (torch.randn(width, self.dim, generator=gen) / math.sqrt(self.dim)).to(device)
        shape = (len(self.names), self.dim + 1, self.dim + 1)
        self.add_state("gram", torch.zeros(shape, dtype=torch.float64), "sum")

    def prepare(self) -> None:
        """Select the tokens (right padding and position 0 excluded by default)."""
        self.mask_BT = select_positions(self.attention_mask, self.positions)

    def reduce_capture(self, name: str, tensor: Tensor) -> Tensor:
        """``[B, T, D]`` hidden states -> Gram with ones ``[K+1, K+1]``."""
        return gram_with_ones(tensor, self.mask_BT, self.projection)

    def update(self, captures: Mapping[str, Tensor], batch: Any = None) -> None:
        """Add this forward's Gram matrices."""
        self.gram += torch.stack([captures[name] for name in self.names]).double()

    def compute(self) -> dict[str, Tensor]:
        """Nothing on the device: the spectrum is taken on the host (see :meth:`finish`)."""
        return {}

    def host_inputs(self) -> dict[str, Tensor]:
        """The reduced Gram matrices; CUDA eigensolvers would add a host sync, so eigenvalues are taken on the host."""
        return {"gram": self.gram}

    def finish(self, host: Mapping[str, np.ndarray], step: int) -> dict[str, float]:
        """RankMe, RankMe / K and participation ratio per layer and for the final norm (NaN for a non-finite Gram)."""
        gram = torch.from_numpy(np.asarray(host["gram"], dtype=np.float64))
        finite = np.asarray(torch.isfinite(gram).flatten(1).all(dim=1))
        safe = torch.where(torch.from_numpy(finite)[:, None, None], gram, torch.zeros_like(gram))
        rank = np.where(finite, np.asarray(effective_rank(safe, self.centered)), np.nan)
        part = np.where(finite, np.asarray(participation_ratio(safe)), np.nan)
        out = {}
        for i in range(len(self.names)):
            scope = layer_scope(i) if i < len(self.names) - 1 else None
            out[self.key("rankme", scope)] = float(rank[i])
            out[self.key("rankme_frac", scope)] = float(rank[i]) / self.dim
            out[self.key("part_ratio", scope)] = float(part[i])
        return out

    def default_rules(self) -> list[Rule]:
        """``dimensional_collapse`` on every ``rankme`` key."""
        scopes = [layer_scope(i) for i in range(len(self.names) - 1)] + [None]
        return [
            Collapse(
                self.key("rankme", s), ratio=self.ratio, patience=2, warmup=1, rise=0.1, name="dimensional_collapse"
            )
            for s in scopes
        ]
