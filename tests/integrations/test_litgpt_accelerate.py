"""LitGPT's own ``GPT`` (``litgpt.model``) in a Fabric loop, and a plain loop under Hugging Face ``accelerate``'s
``Accelerator``: the default probes with no adapter, values equal to the same probes run by hand.

litgpt is installed without its dependencies (``make test`` does it): ``pip install litgpt`` pins
``huggingface-hub<1.4`` and would downgrade transformers; its model file needs none of them.
"""

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from mechmon import InductionProbe, LogitsProbe, MechMonitor, Monitor, every
from tests.helpers import hook_count

litgpt_model = pytest.importorskip("litgpt.model")


def litgpt_gpt(context: int = 64):
    from litgpt.config import Config

    torch.manual_seed(0)
    config = Config(n_layer=2, n_head=4, n_embd=32, block_size=context, vocab_size=64, padded_vocab_size=64, bias=True)
    return litgpt_model.GPT(config)


def test_litgpt_gpt_in_a_fabric_loop_with_the_default_probes():
    model = litgpt_gpt()  # max_seq_length 64: the default periods fit it (50 -> 32)
    with pytest.warns(UserWarning, match="period 32 is used"):
        monitor = MechMonitor(probes=[InductionProbe(), LogitsProbe()], schedule=every(2))
        fabric = L.Fabric(accelerator="cpu", devices=1, callbacks=[monitor])
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model, optimizer = fabric.setup(model, optimizer)
    data = torch.randint(0, 64, (4, 4, 65), generator=torch.Generator().manual_seed(0))
    for rows in data:
        x, y = rows[:, :-1], rows[:, 1:]
        logits = model(x)  # LitGPT returns logits for every position; the loss is the loop's
        fabric.backward(F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1)))
        optimizer.step()
        optimizer.zero_grad()
    monitor.close()
    latest = monitor.engine.latest
    assert not monitor.engine.disabled and latest["mechmon/induction/score_max"] > 0
    # Fabric hands the callback no batch: the probe reads the model's input x, whose targets are x shifted by one,
    # so the last position (no target in x) is left out; step 4's logits are those of the last forward
    expected = F.cross_entropy(logits.detach()[:, :-1].reshape(-1, 64), y[:, :-1].reshape(-1))
    assert latest["mechmon/logits/loss_nats"] == pytest.approx(expected.item(), rel=1e-5)
    assert hook_count(model) == 0


def test_a_plain_loop_under_accelerate():
    accelerate = pytest.importorskip("accelerate")
    from tests.helpers import tiny_gpt2

    accelerator = accelerate.Accelerator(cpu=True)
    model = tiny_gpt2()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    monitor = Monitor(model, optimizer=optimizer, probes=[InductionProbe(period=10, batch_size=2), LogitsProbe()],
                      schedule=every(2), log_dir=None)  # fmt: skip
    data = torch.randint(1, 64, (4, 2, 48), generator=torch.Generator().manual_seed(0))
    for step, batch in enumerate(data, start=1):
        with monitor.step(step, batch):
            loss = model(input_ids=batch, labels=batch).loss
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    assert monitor.last_step == 4 and not monitor.disabled
    assert monitor.latest["mechmon/logits/loss_nats"] == pytest.approx(loss.item(), rel=1e-5)
    assert hook_count(model) == 0
