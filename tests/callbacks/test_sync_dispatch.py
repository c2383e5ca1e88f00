"""Host-device syncs counted at the dispatcher in a real plain loop (``tests/helpers/syncs.py``: ``.item()``,
``bool()``, ``nonzero``, boolean masks, ... wherever they are called from): none on unscheduled steps; on scheduled
steps none from mechmon's own code, only the model's own forward code run by the snapshot probes; the rows taken from
the first training batch cost one read of its mask per probe, at step 1 only."""

import torch

import mechmon
from mechmon import CollapseProbe, InductionProbe, LogitsProbe, Monitor, RankProbe, WeightsProbe, every
from tests.helpers import CTX, VOCAB, tiny_gpt2
from tests.helpers.syncs import Syncs

STEPS = 10
SCHEDULED = {1, 3, 6, 9}


def per_step(monitor=None) -> list[Syncs]:
    """The syncs of each step of a plain SGD loop (SGD: no .item() of its own), with or without a monitor."""
    torch.manual_seed(0)
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randint(1, VOCAB, (STEPS, 2, CTX), generator=torch.Generator().manual_seed(0))
    if monitor is not None:
        monitor.attach(model, optimizer=optimizer, log_dir=None)
    seen = []
    for step, batch in enumerate(data, start=1):
        with Syncs() as syncs, monitor.step(step, batch) if monitor is not None else _nothing():
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        seen.append(syncs)
    if monitor is not None:
        monitor.close()
    return seen


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def monitor(probes):
    return Monitor(probes=probes, schedule=every(3), budget=None, console=False)


def test_no_sync_on_unscheduled_steps_and_none_from_mechmon_on_scheduled_ones():
    plain = [s.total for s in per_step()]
    watched = per_step(monitor([InductionProbe(period=10, batch_size=2), LogitsProbe(), WeightsProbe()]))
    for step, (base, syncs) in enumerate(zip(plain, watched, strict=True), start=1):
        assert syncs.within(mechmon) == {}, (step, syncs.within(mechmon))
        if step not in SCHEDULED:
            assert syncs.total == base, (step, syncs.counts)
        else:  # the snapshot forward runs the model's own code (here GPT-2's padding check and mask): its syncs only
            assert syncs.total > base and all("transformers" in origin for _, origin in syncs.counts), syncs.counts


def test_rows_taken_from_training_cost_one_mask_read_per_probe_at_step_1_only():
    watched = per_step(monitor([CollapseProbe(), RankProbe()]))  # rows from the first training batch
    first = watched[0].within(mechmon)
    assert sum(first.values()) == 2 and all("fixed_batch.py" in origin for _, origin in first), first
    assert all(s.within(mechmon) == {} for s in watched[1:]), [s.within(mechmon) for s in watched[1:]]
