"""Every decoder architecture of the matrix is monitored with no adapter, with the scores of an eager model.

Each model is built twice from the same tiny config and seed: as transformers builds it by default (SDPA where the
architecture supports it) for mechmon, and with ``attn_implementation="eager"`` for the reference, whose
``output_attentions=True`` probabilities give the expected induction and previous-token scores. Mean-ablating every
head of a layer at the site mechmon found must leave that layer's attention writing one vector at every position.
"""

import pytest
import torch

from mechmon import InductionProbe, evaluate, resolve_adapter
from mechmon.ablation import mean_ablation
from mechmon.adapters import FINAL_NORM, LOGITS, HFAdapter, first_output, pattern_name, resid_name
from mechmon.functional.induction import induction_scores, prev_token_scores
from tests.helpers.archs import ARCHITECTURES, SLIDING, tiny_model

PERIOD = 8
NO_HEAD_OUTPUTS = ["jetmoe"]  # mixture-of-attention experts: no per-head output projection, nothing ablated


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_architecture_is_monitored_with_the_eager_scores(model_type):
    model = tiny_model(model_type)
    implementation = model.config._attn_implementation
    adapter = resolve_adapter(model)
    assert isinstance(adapter, HFAdapter) and adapter.model is model
    points = adapter.hook_points()
    for name in [FINAL_NORM, LOGITS] + [f(i) for i in range(adapter.n_layers) for f in (pattern_name, resid_name)]:
        assert name in points, name
    probe = InductionProbe(period=PERIOD, batch_size=2)
    out = evaluate(probe, adapter)
    assert model.config._attn_implementation == implementation  # restored after the probe forward
    with torch.no_grad():
        reference = tiny_model(model_type, attn="eager")
        patterns = reference(input_ids=probe.probe_batch, output_attentions=True, use_cache=False).attentions
    assert len(patterns) == adapter.n_layers
    induction = torch.stack([induction_scores(p, PERIOD) for p in patterns])
    previous = torch.stack([prev_token_scores(p) for p in patterns])
    torch.testing.assert_close(out["mechmon/induction/head_scores"], induction, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["mechmon/prev_token/head_scores"], previous, atol=1e-5, rtol=1e-4)
    if model_type in NO_HEAD_OUTPUTS:
        assert "mechmon/induction/ablation_gap_nats" not in out
        return
    assert abs(float(out["mechmon/induction/ablation_gap_nats"])) < 0.1  # random init: no head carries copying
    # every head of the last layer mean-ablated: its attention writes one and the same vector at every position
    attention = model.get_submodule(adapter.layout.attention[-1])
    written = []

    def write(module, args, kwargs, output):  # Bloom adds the residual (its second argument) inside its attention
        written.append(first_output(output) - (args[1] if model_type == "bloom" else 0))

    hook = attention.register_forward_hook(write, with_kwargs=True)
    mask = torch.zeros(adapter.n_layers, adapter.n_heads, dtype=torch.bool)
    mask[-1] = True
    with torch.no_grad():
        adapter.forward(probe.probe_batch)
        with mean_ablation(adapter, mask):
            adapter.forward(probe.probe_batch)
    hook.remove()
    clean, ablated = written
    torch.testing.assert_close(ablated, ablated[:1, :1].expand_as(ablated), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(clean, clean[:1, :1].expand_as(clean), atol=1e-3)


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_attention_entropy_and_sinks_equal_the_eager_probabilities(model_type):
    from mechmon import AttentionEntropyProbe, AttentionSinkProbe

    model = tiny_model(model_type)
    implementation = model.config._attn_implementation
    batch = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    out = evaluate([AttentionEntropyProbe(batch), AttentionSinkProbe(batch)], model)
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        reference = tiny_model(model_type, attn="eager")
        patterns = reference(input_ids=batch, output_attentions=True, use_cache=False).attentions
    probs = torch.stack([p.float() for p in patterns])  # [L, B, H, Q, K]
    if model_type in SLIDING:  # the window hides causal keys in some layer, so a tap ignoring it would differ
        assert ((probs == 0) & torch.ones(12, 12, dtype=torch.bool).tril()).any()
    visible = (probs > 0).sum(dim=-1)[..., 1:]
    entropy = torch.special.entr(probs).sum(dim=-1)[..., 1:] / visible.clamp_min(2).log()
    head_entropy = torch.where(visible >= 2, entropy, 0).sum(dim=(1, 3)) / (visible >= 2).sum(dim=(1, 3))
    first_mass = probs[..., 0].mean(dim=-1).mean(dim=1)  # α₀ per sample, averaged over samples: [L, H]
    torch.testing.assert_close(out["mechmon/attn_entropy/head_mean"], head_entropy, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["mechmon/attn_sink/first_mass"], first_mass, atol=1e-5, rtol=1e-4)
