"""The extra peak memory of a snapshot probe's evaluation: about one eager no-grad forward of its probe batch."""

import pytest
import torch

from mechmon import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    CollapseProbe,
    InductionProbe,
    MassiveActivationProbe,
    Monitor,
    PrefixMatchingProbe,
    RankProbe,
    RepetitionProbe,
)
from tests.helpers import tiny_gpt2
from tests.helpers.memory import LiveBytes

LAYERS, CTX = 4, 128
TEXT = torch.randint(1, 64, (16, CTX), generator=torch.Generator().manual_seed(0))
PROBES = {
    "induction": lambda: InductionProbe(),
    "prefix_match": lambda: PrefixMatchingProbe(),
    "collapse": lambda: CollapseProbe(TEXT),
    "rank": lambda: RankProbe(TEXT),
    "repetition": lambda: RepetitionProbe(TEXT),
    "massive_act": lambda: MassiveActivationProbe(TEXT),
    "attn_logit": lambda: AttentionLogitProbe(TEXT),
    "attn_entropy": lambda: AttentionEntropyProbe(TEXT),
    "attn_sink": lambda: AttentionSinkProbe(TEXT),
}


def forward_peak(model, ids) -> int:
    """Peak bytes of one eager no-grad eval forward of ``ids`` (the unit of the documented bound)."""
    with torch.no_grad(), LiveBytes(list(model.parameters()) + [ids]) as live:
        model(input_ids=ids)
    return live.peak


@pytest.mark.parametrize("name", list(PROBES))
def test_an_evaluation_costs_at_most_one_forward_of_the_probe_batch_plus_a_mebibyte(name):
    model = tiny_gpt2("eager", layers=LAYERS, ctx=CTX).eval()
    monitor = Monitor(model, probes=[PROBES[name]()], schedule=1, log_dir=None, console=False)
    try:
        probe = monitor.probes[0]
        monitor.begin_batch(1, TEXT)
        with LiveBytes(list(model.parameters()) + [TEXT]) as live:
            monitor.after_optimizer_step(1)  # the scheduled evaluation, without a training step around it
        assert monitor.latest, "the probe logged nothing"
        bound = forward_peak(model, probe.probe_batch) + 2**20
        assert 0 < live.peak <= bound, (live.peak / 2**20, bound / 2**20)
    finally:
        monitor.close()
