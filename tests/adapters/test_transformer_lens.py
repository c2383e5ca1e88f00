"""TransformerLens models; each test runs only where its major version of transformer-lens is installed (an extra)."""

import os
from importlib import metadata

import pytest
import torch

from mechmon import InductionProbe, evaluate
from mechmon.adapters import TransformerLensAdapter, resolve_adapter
from mechmon.functional.induction import induction_scores


def _major() -> int | None:
    try:
        return int(metadata.version("transformer-lens").split(".")[0])
    except metadata.PackageNotFoundError:
        return None


MAJOR = _major()
needs3 = pytest.mark.skipif(MAJOR != 3, reason=f"needs transformer-lens 3.x (HookedTransformer); installed: {MAJOR}")
needs4 = pytest.mark.skipif(MAJOR != 4, reason=f"needs transformer-lens 4.x (TransformerBridge); installed: {MAJOR}")


def test_the_environment_has_the_major_version_it_was_built_for():
    """``make test`` runs this file again in a 3.x environment: there, a 4.x install would only skip the 3.x tests."""
    expected = os.environ.get("MECHMON_TL_MAJOR")
    assert expected is None or MAJOR == int(expected), f"MECHMON_TL_MAJOR={expected}, installed: {MAJOR}"


def scores_match_the_cache(model, run_with_cache):
    adapter = resolve_adapter(model)
    assert isinstance(adapter, TransformerLensAdapter)
    probe = InductionProbe(period=20, batch_size=2)
    out = evaluate(probe, adapter)
    _, cache = run_with_cache(probe.probe_batch)
    expected = torch.stack([induction_scores(cache[f"blocks.{layer}.attn.hook_pattern"], 20) for layer in range(2)])
    torch.testing.assert_close(out["mechmon/induction/head_scores"], expected)


@needs3
def test_hooked_transformer_scores_match_its_own_cache():
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, act_fn="relu", attn_only=True
    )
    model = tl.HookedTransformer(cfg)
    scores_match_the_cache(model, model.run_with_cache)


@needs4
def test_transformer_bridge_scores_match_its_own_cache():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, seed=0)
    model = TransformerBridge.boot_native(cfg)
    scores_match_the_cache(model, model.run_with_cache)


def attention_stats_match_the_cache(model, run_with_cache, logits_measured: bool):
    from mechmon import AttentionEntropyProbe, AttentionLogitProbe, AttentionSinkProbe

    batch = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(0))
    out = evaluate([AttentionLogitProbe(batch), AttentionEntropyProbe(batch), AttentionSinkProbe(batch)], model)
    _, cache = run_with_cache(batch)
    probs = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"] for layer in range(2)])  # [L, B, H, Q, K]
    entropy = torch.special.entr(probs).sum(dim=-1)[..., 1:] / torch.arange(2, 21).log()
    torch.testing.assert_close(out["mechmon/attn_entropy/head_mean"], entropy.mean(dim=(1, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        out["mechmon/attn_sink/first_mass"], probs[..., 0].mean(dim=(1, 3)), rtol=1e-4, atol=1e-5
    )
    assert torch.isfinite(out["mechmon/attn_logits/max"]).item() == logits_measured


@needs3
def test_hooked_transformer_attention_statistics_match_its_cache():
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, act_fn="relu", attn_only=True
    )
    model = tl.HookedTransformer(cfg)
    attention_stats_match_the_cache(model, model.run_with_cache, logits_measured=True)


@needs4
def test_transformer_bridge_attention_statistics_match_its_cache_and_its_max_logit_is_nan():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, seed=0)
    model = TransformerBridge.boot_native(cfg)
    with pytest.warns(UserWarning, match="TransformerBridge exposes no pre-softmax attention scores"):
        attention_stats_match_the_cache(model, model.run_with_cache, logits_measured=False)


@needs4
def test_a_bridges_documented_nan_max_logit_is_a_warning_not_a_critical_alert():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    from mechmon import AttentionLogitProbe, Monitor

    cfg = TransformerBridgeConfig(n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, seed=0)
    model = TransformerBridge.boot_native(cfg)
    batch = torch.randint(1, 64, (2, 32), generator=torch.Generator().manual_seed(0))
    monitor = Monitor(model, probes=[AttentionLogitProbe(batch=batch)], schedule=1, log_dir=None)
    with pytest.warns(UserWarning, match="could not be measured at step 1 .*TransformerLens 4"):
        for step in (1, 2):
            monitor.begin_batch(step)
            monitor.after_optimizer_step(step)
    monitor.close()
    assert [a.rule for a in monitor.alerts] == []


def ablation_matches_its_own_hooks(model):
    """The probe's gap for its best head equals one computed with TransformerLens's own hooks on ``hook_z``."""
    probe = InductionProbe(period=20, batch_size=2, ablate_k=1)
    out = evaluate(probe, model)
    layer, head = divmod(int(out["mechmon/induction/head_scores"].argmax()), 4)

    def mean_head(z, hook):
        split = z.view(*z.shape[:2], 4, -1)  # [B, T, H, d_head], whichever way the hook holds it
        split[:, :, head] = split[:, :, head].mean(dim=(0, 1))
        return z

    ids = probe.probe_batch
    with torch.no_grad():
        clean = model(ids)
        ablated = model.run_with_hooks(ids, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", mean_head)])
    loss = torch.nn.functional.cross_entropy
    rep = [loss(logits[:, 20:-1].flatten(0, 1), ids[:, 21:].flatten()) for logits in (clean, ablated)]  # copy 2
    assert float(out["mechmon/induction/ablation_gap_nats"]) == pytest.approx(float(rep[1] - rep[0]), abs=1e-5)


@needs3
def test_hooked_transformer_ablation_matches_its_own_hooks():
    import transformer_lens as tl

    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, act_fn="relu", attn_only=True
    )
    ablation_matches_its_own_hooks(tl.HookedTransformer(cfg))


@needs4
def test_transformer_bridge_ablation_matches_its_own_hooks():
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, seed=0)
    ablation_matches_its_own_hooks(TransformerBridge.boot_native(cfg))
