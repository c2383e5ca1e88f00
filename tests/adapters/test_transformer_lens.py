"""Runs only where transformer-lens < 4 (HookedTransformer) is installed; it is not a dependency."""

import pytest
import torch

from mechmon.adapters import TransformerLensAdapter, resolve_adapter
from mechmon.capture import resolve_names
from mechmon.engine import snapshot_forward
from mechmon.functional.induction import induction_scores
from mechmon.probes import InductionProbe

tl = pytest.importorskip("transformer_lens", reason="transformer-lens is an optional extra")
if not hasattr(tl, "HookedTransformer"):
    pytest.skip("transformer-lens >= 4 has no HookedTransformer", allow_module_level=True)


def test_hooked_transformer_scores_match_its_own_cache():
    cfg = tl.HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=48, d_head=8, n_heads=4, d_vocab=64, act_fn="relu", attn_only=True
    )
    model = tl.HookedTransformer(cfg)
    adapter = resolve_adapter(model)
    assert isinstance(adapter, TransformerLensAdapter)
    probe = InductionProbe(period=20, batch_size=2)
    probe.setup(model, adapter, torch.device("cpu"))
    snapshot_forward(probe, adapter, resolve_names(adapter, probe.requires))
    _, cache = model.run_with_cache(probe.probe_batch)
    expected = torch.stack([induction_scores(cache["pattern", layer], 20) for layer in range(2)])
    torch.testing.assert_close(probe.compute()["mechmon/induction/head_scores"], expected)
