"""Mean ablation of the best induction heads: the formula against a loop, the probe against an explicit ablation
made by editing the output projection's weights of a copy of the model, layer after layer."""

import copy
import math

import pytest
import torch
from torch import nn

from mechmon import InductionProbe, evaluate, resolve_adapter
from mechmon.ablation import mean_ablation
from mechmon.functional.ablation import jaccard, mean_ablate, top_heads
from mechmon.functional.induction import repeated_sequence_losses
from tests.helpers.archs import tiny_model

PERIOD = 8


def test_mean_ablate_equals_a_loop_over_rows_and_heads():
    z = torch.randn(10, 4, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([False, True, False, True])
    out = mean_ablate(z, mask)
    for h in range(4):
        for n in range(10):
            expected = sum(z[m, h] for m in range(10)) / 10 if mask[h] else z[n, h]
            torch.testing.assert_close(out[n, h], expected, rtol=0, atol=1e-6)
    assert torch.equal(out[:, 0], z[:, 0])  # untouched heads keep their exact values


def test_top_heads_and_jaccard_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.8, 0.0, 0.5]])
    assert top_heads(scores, 3).tolist() == [1, 3, 5]  # flat l * H + h, best first
    assert top_heads(scores, 10).tolist() == [1, 3, 5, 2, 0, 4]
    assert jaccard({1, 3, 5}, {1, 3, 4}) == 2 / 4
    assert jaccard({1}, {1}) == 1.0 and jaccard({1}, {2}) == 0.0 and math.isnan(jaccard(set(), set()))


def _projection(model: nn.Module, layer: int) -> nn.Module:
    return resolve_adapter(model).head_sites()[layer].module


def _zero_head(projection: nn.Module, head: int, d_head: int, mean: torch.Tensor) -> None:
    """Edit the projection so head ``head`` always contributes what its mean input gives (explicit mean ablation)."""
    cols = slice(head * d_head, (head + 1) * d_head)
    conv = type(projection).__name__ == "Conv1D"  # GPT-2: weight [in, out]
    weight = projection.weight.data
    contribution = mean @ weight[cols] if conv else weight[:, cols] @ mean
    if conv:
        weight[cols] = 0
    else:
        weight[:, cols] = 0
    if projection.bias is None:
        projection.bias = nn.Parameter(torch.zeros(weight.shape[1] if conv else weight.shape[0]))
    projection.bias.data += contribution


def explicit_ablation_loss(model: nn.Module, ids: torch.Tensor, flat_heads: list[int], n_heads: int) -> float:
    """Copy-2 loss of a copy of ``model`` whose projections are edited layer after layer (each layer's means taken
    from the copy with the earlier layers already ablated)."""
    edited = copy.deepcopy(model)
    by_layer: dict[int, list[int]] = {}
    for flat in flat_heads:
        by_layer.setdefault(flat // n_heads, []).append(flat % n_heads)
    with torch.no_grad():
        for layer in sorted(by_layer):
            projection = _projection(edited, layer)
            seen = {}
            hook = projection.register_forward_pre_hook(lambda m, a, seen=seen: seen.setdefault("in", a[0].clone()))
            edited(input_ids=ids, use_cache=False)
            hook.remove()
            rows = seen["in"].reshape(-1, seen["in"].shape[-1])
            d_head = rows.shape[1] // n_heads
            for head in by_layer[layer]:
                _zero_head(projection, head, d_head, rows[:, head * d_head : (head + 1) * d_head].mean(dim=0))
        logits = edited(input_ids=ids, use_cache=False).logits
    return float(repeated_sequence_losses(logits, ids, PERIOD)[1])


@pytest.mark.parametrize("model_type", ["gpt2", "llama"])
def test_the_gaps_equal_an_explicit_ablation_by_editing_weights(model_type):
    model = tiny_model(model_type, attn="eager")
    probe = InductionProbe(period=PERIOD, batch_size=2, ablate_k=3, ablate_each=True)
    out = evaluate(probe, model)
    scores = out["mechmon/induction/head_scores"]
    top = top_heads(scores, 3).tolist()
    assert len({t // scores.shape[1] for t in top}) == 2  # the heads span both layers: the edits compound
    ids, clean = probe.probe_batch, float(out["mechmon/induction/loss_rep_nats"])
    together = explicit_ablation_loss(model, ids, top, scores.shape[1]) - clean
    assert float(out["mechmon/induction/ablation_gap_nats"]) == pytest.approx(together, abs=1e-5)
    for i, head in enumerate(top, start=1):
        alone = explicit_ablation_loss(model, ids, [head], scores.shape[1]) - clean
        assert float(out[f"mechmon/induction/ablation_gap_nats/top{i}"]) == pytest.approx(alone, abs=1e-5)
    assert abs(together) < 0.05  # random init: no head carries the copying


def test_ablation_runs_after_the_scored_forward_and_leaves_the_scores_and_the_model_alone():
    model = tiny_model("gpt2", attn="eager")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with_ablation = evaluate(InductionProbe(period=PERIOD, batch_size=2), model)
    without = evaluate(InductionProbe(period=PERIOD, batch_size=2, ablate_k=0), model)
    assert "mechmon/induction/ablation_gap_nats" not in without
    for key, value in without.items():
        torch.testing.assert_close(with_ablation[key], value, rtol=0, atol=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_a_projection_the_forward_never_calls_gives_nan_with_the_reason():
    from mechmon.adapters.structural import StructuralAdapter

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
            return x + self.attn(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)[0]

    class Tiny(nn.Module):  # nn.MultiheadAttention reads out_proj.weight without calling out_proj
        def __init__(self):
            super().__init__()
            self.emb, self.blocks = nn.Embedding(32, 8), nn.ModuleList([Block(), Block()])
            self.norm, self.head = nn.LayerNorm(8), nn.Linear(8, 32)

        def forward(self, ids):
            x = self.emb(ids)
            for block in self.blocks:
                x = block(x)
            return self.head(self.norm(x))

    adapter = StructuralAdapter(Tiny())
    with pytest.warns(UserWarning, match="no forward called layer 0's head site"):
        out = evaluate(InductionProbe(period=PERIOD, batch_size=2), adapter)
    assert math.isnan(float(out["mechmon/induction/ablation_gap_nats"]))
    assert math.isfinite(float(out["mechmon/induction/score_max"]))
    with pytest.raises(RuntimeError, match="no forward called"), mean_ablation(adapter, torch.ones(2, 2, dtype=bool)):
        pass


def test_the_prefix_matching_option_equals_an_explicit_ablation_of_its_best_head():
    from mechmon import PrefixMatchingProbe

    model = tiny_model("llama", attn="eager")
    assert "mechmon/prefix_match/ablation_gap_nats" not in evaluate(PrefixMatchingProbe(period=PERIOD), model)
    probe = PrefixMatchingProbe(period=PERIOD, batch_size=2, ablate_k=1)
    out = evaluate(probe, model)
    scores = out["mechmon/prefix_match/head_scores"]
    edited = copy.deepcopy(model)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    ids = probe.probe_batch
    with torch.no_grad():
        seen = {}
        hook = _projection(edited, layer).register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0].clone()))
        clean_logits = edited(input_ids=ids, use_cache=False).logits
        hook.remove()
        rows = seen["in"].reshape(-1, seen["in"].shape[-1])
        d_head = rows.shape[1] // scores.shape[1]
        _zero_head(_projection(edited, layer), head, d_head, rows[:, head * d_head : (head + 1) * d_head].mean(0))
        ablated_logits = edited(input_ids=ids, use_cache=False).logits
    copies = [repeated_sequence_losses(lg, ids, PERIOD, copies=4)[1:].mean() for lg in (clean_logits, ablated_logits)]
    assert float(out["mechmon/prefix_match/ablation_gap_nats"]) == pytest.approx(float(copies[1] - copies[0]), abs=1e-5)
