"""The attention-side and extreme-token probes on real models: SDPA-read values equal an eager or naive reference,
alerts fire on a planted instability, and a real fit writes every key."""

import math

import pytest
import torch

from mechmon import (
    AttentionEntropyProbe,
    AttentionLogitProbe,
    AttentionSinkProbe,
    LogitsProbe,
    MassiveActivationProbe,
    MechMonitor,
    Monitor,
    evaluate,
)
from tests.helpers import CTX, VOCAB, TinyLM, hook_count, make_trainer, plain_run, read_events, tiny_gpt2, token_loader
from tests.helpers.archs import tiny_model
from tests.helpers.nanogpt import gpt

BATCH = torch.randint(1, VOCAB, (3, CTX), generator=torch.Generator().manual_seed(0))


def probes(batch=BATCH):
    return [AttentionLogitProbe(batch), AttentionEntropyProbe(batch), AttentionSinkProbe(batch),
            MassiveActivationProbe(batch)]  # fmt: skip


def naive_max_logits(attention_inputs, qkv, scale):
    """Per layer and head, the max of scale·q·k over causal pairs, from each attention module's input."""
    out = []
    for x in attention_inputs:
        q, k, _ = qkv(x)
        T = x.shape[1]
        scores = (q @ k.transpose(-2, -1) * scale).masked_fill(torch.ones(T, T).tril() == 0, float("-inf"))
        out.append(scores.amax(dim=(0, 2, 3)))
    return torch.stack(out)


def test_max_logit_of_an_sdpa_gpt2_equals_q_and_k_of_its_eager_twin():
    sdpa, eager = tiny_gpt2("sdpa"), tiny_gpt2("eager")
    out = evaluate(AttentionLogitProbe(BATCH), sdpa)
    inputs = []
    for block in eager.transformer.h:
        block.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        eager.eval()(input_ids=BATCH)

    def qkv(x):
        attn = eager.transformer.h[len(done)].attn
        done.append(1)
        q, k, v = attn.c_attn(x).split(attn.embed_dim, dim=2)
        return [t.view(*x.shape[:2], attn.num_heads, attn.head_dim).transpose(1, 2) for t in (q, k, v)]

    done: list[int] = []
    with torch.no_grad():
        expected = naive_max_logits(inputs, qkv, 1 / math.sqrt(eager.transformer.h[0].attn.head_dim))
    torch.testing.assert_close(out["mechmon/attn_logits/head_max"], expected, rtol=1e-5, atol=1e-6)
    assert out["mechmon/attn_logits/max"].item() == pytest.approx(expected.max().item(), rel=1e-5)


def test_max_logit_of_a_nanogpt_module_equals_a_naive_loop():
    model = gpt().eval()
    out = evaluate(AttentionLogitProbe(BATCH), model)
    inputs = []
    handles = [b.attn.register_forward_pre_hook(lambda m, args: inputs.append(args[0])) for b in model.transformer.h]
    with torch.no_grad():
        model(BATCH)
        expected = [naive_max_logits([x], b.attn.qkv, 1 / math.sqrt(b.attn.n_embd // b.attn.n_head))[0]
                    for x, b in zip(inputs, model.transformer.h, strict=True)]  # fmt: skip
    for handle in handles:
        handle.remove()
    torch.testing.assert_close(out["mechmon/attn_logits/head_max"], torch.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_type", ["llama", "qwen3", "gpt2"])
def test_every_new_probe_on_an_sdpa_model_equals_the_same_probe_on_its_eager_twin(model_type):
    batch = torch.randint(3, 60, (2, 16), generator=torch.Generator().manual_seed(1))
    sdpa, eager = tiny_model(model_type, attn="sdpa"), tiny_model(model_type, attn="eager")
    a, b = evaluate(probes(batch), sdpa), evaluate(probes(batch), eager)
    assert eager.config._attn_implementation == "eager"  # switched to SDPA for the probe forward, and back
    assert a.keys() == b.keys() and len(a) > 10
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)
        assert torch.isfinite(a[key]).all(), key


def scaled_queries(model, factor: float):
    """Scale the query and key projections of every GPT-2 block by ``factor``: attention logits grow by its square."""
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_attn.weight[:, : 2 * block.attn.embed_dim] *= factor
    return model


def test_logit_growth_and_entropy_collapse_alerts_fire_on_grown_logits_and_not_at_initialisation():
    for factor, fired in ((1.0, set()), (60.0, {"attention_logit_growth", "attention_entropy_collapse"})):
        model = scaled_queries(tiny_gpt2(), factor)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        monitor = Monitor(model, optimizer=optimizer, probes=probes()[:2], schedule=1, log_dir=None)
        plain_run(monitor, model, optimizer, 3)
        assert {a.rule for a in monitor.alerts} == fired, factor
        assert hook_count(model) == 0
    assert monitor.latest["mechmon/attn_logits/max"] > 100
    assert monitor.latest["mechmon/attn_entropy/collapsed_frac"] > 0.5
    layers = {k[-3:]: v for k, v in monitor.latest.items() if k.startswith("mechmon/attn_logits/max/L")}
    worst = max(layers, key=layers.get)
    growth = next(a for a in monitor.alerts if a.rule == "attention_logit_growth")
    assert len(layers) == 2 and growth.reason.endswith(f"; at layer {worst} ({layers[worst]:.4g})")  # where it grew


def test_a_real_fit_writes_every_new_key_and_heatmap(tmp_path):
    monitor = MechMonitor(probes=[*probes(None), LogitsProbe()], schedule=2, image_schedule=2)
    trainer = make_trainer(tmp_path, [monitor], max_steps=4)
    trainer.fit(TinyLM(), token_loader())
    acc = read_events(tmp_path / "tb")
    scalars, images = set(acc.Tags()["scalars"]), set(acc.Tags()["images"])
    for stat in ["max", "max_mean", "max/L00", "max/L01"]:
        assert f"mechmon/attn_logits/{stat}" in scalars
    for stat in ["mean", "min_head", "collapsed_frac", "mean/L01"]:
        assert f"mechmon/attn_entropy/{stat}" in scalars
    for stat in ["sink_frac", "first_mass_mean", "sink_frac/L01"]:
        assert f"mechmon/attn_sink/{stat}" in scalars
    for stat in ["ratio_max", "massive_count", "ratio/L01", "ratio2/L01", "ratio3/L01", "top1_abs/L01"]:
        assert f"mechmon/massive_act/{stat}" in scalars
    for stat in ["log_z_mean", "log_z_abs_mean", "log_z_abs_max"]:
        assert f"mechmon/logits/{stat}" in scalars
    assert {"mechmon/attn_logits/head_max", "mechmon/attn_entropy/head_mean", "mechmon/attn_sink/first_mass"} <= images
    assert [e.step for e in acc.Scalars("mechmon/attn_logits/max")] == [1, 2, 4]
    assert all(math.isfinite(e.value) for tag in scalars if "mechmon/" in tag for e in acc.Scalars(tag))
