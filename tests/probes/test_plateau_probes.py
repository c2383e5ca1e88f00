"""The plateau family on a real HF GPT-2 built from a config, against naive references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mechmon
from mechmon.functional.plateau import repetition_frac
from mechmon.probes import AttentionProgressProbe, CollapseProbe, RankProbe, RepetitionProbe
from tests.helpers import VOCAB, tiny_gpt2
from tests.helpers.naive import naive_apm, naive_mean_cos, naive_rankme

T = 12


def batch(rows=3, seed=0):
    return torch.randint(1, VOCAB, (rows, T), generator=torch.Generator().manual_seed(seed))


def evaluate(probe, model, times=1, training_batch=None):
    """The scalars the monitor would log for one evaluation (device compute plus host finish)."""
    out = mechmon.evaluate(probe, model, batch=training_batch, forwards=times)
    return {k: v.item() for k, v in out.items() if v.ndim == 0}


def hidden_states(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, output_hidden_states=True).hidden_states  # GPT-2: the last is after ln_f


def test_collapse_probe_matches_pair_loop_with_padding():
    model = tiny_gpt2().eval()
    ids, attn = batch(), torch.ones(3, T, dtype=torch.long)
    attn[1, 8:] = 0  # right padding
    out = evaluate(CollapseProbe({"input_ids": ids, "attention_mask": attn}), model)
    mask = attn.bool().clone()
    mask[:, 0] = False
    hs = hidden_states(model, ids)
    for key, h in [("mean_cos", hs[-1]), ("mean_cos/L00", hs[1])]:
        want, valid = naive_mean_cos(h, mask)
        assert out[f"mechmon/repr_collapse/{key}"] == pytest.approx(want[valid].mean().item(), abs=1e-5)
    logits = model(input_ids=ids).logits
    losses = [
        F.cross_entropy(logits[b, t][None], ids[b, t + 1][None]).item()
        for b in range(3)
        for t in range(1, T - 1)
        if mask[b, t] and attn[b, t + 1]
    ]
    assert out["mechmon/repr_collapse/loss_nats"] == pytest.approx(np.mean(losses), rel=1e-5)


def test_collapse_probe_positions_and_two_forwards_equal_one():
    model = tiny_gpt2().eval()
    positions = [3, 5, 6, 9]
    once = evaluate(CollapseProbe(batch(), positions=positions, per_layer=False), model)
    twice = evaluate(CollapseProbe(batch(), positions=positions, per_layer=False), model, times=2)
    assert once == pytest.approx(twice) and "mechmon/repr_collapse/mean_cos/L00" not in once
    mask = torch.zeros(3, T, dtype=torch.bool)
    mask[:, positions] = True
    want, _ = naive_mean_cos(hidden_states(model, batch())[-1], mask)
    assert once["mechmon/repr_collapse/mean_cos"] == pytest.approx(want.mean().item(), abs=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_rank_probe_matches_rankme_on_singular_values(centered):
    model = tiny_gpt2().eval()
    out = evaluate(RankProbe(batch(4), centered=centered), model)
    hs = hidden_states(model, batch(4))
    for key, h in [("rankme", hs[-1]), ("rankme/L00", hs[1])]:
        z = h[:, 1:].reshape(-1, h.shape[-1]).double()
        z = z - z.mean(0) if centered else z
        assert out[f"mechmon/repr_rank/{key}"] == pytest.approx(naive_rankme(z).item(), rel=1e-4)
    assert out["mechmon/repr_rank/rankme_frac"] == pytest.approx(out["mechmon/repr_rank/rankme"] / 32)
    assert 1 <= out["mechmon/repr_rank/part_ratio/L01"] <= 32


def test_rank_probe_projects_wide_states_and_is_scale_free_in_forwards():
    model = tiny_gpt2().eval()
    once = evaluate(RankProbe(batch(), max_dim=8), model)
    twice = evaluate(RankProbe(batch(), max_dim=8), model, times=2)
    assert once == pytest.approx(twice)  # the Gram doubles; RankMe and PR do not change
    assert 1 <= once["mechmon/repr_rank/rankme"] <= 8 and once["mechmon/repr_rank/rankme_frac"] <= 1.0


def test_rank_probe_non_finite_gram_gives_nan_not_an_error():
    probe = RankProbe(batch())
    evaluate(probe, tiny_gpt2().eval())
    probe.gram[0, 0, 0] = float("nan")
    out = probe.finish({"gram": probe.gram.numpy()}, 0)
    assert np.isnan(out["mechmon/repr_rank/rankme/L00"]) and np.isfinite(out["mechmon/repr_rank/rankme"])


def test_repetition_probe_greedy_matches_hf_generate():
    model = tiny_gpt2().eval()
    ids, G = batch(), 5
    ids[0, -G:] = torch.tensor([7, 7, 7, 8, 8])  # data continuation of row 0 repeats 3 times out of 4
    out = evaluate(RepetitionProbe(ids, gen_len=G), model)
    gen = model.generate(ids[:, :-G], max_new_tokens=G, min_new_tokens=G, do_sample=False, pad_token_id=0)
    assert out["mechmon/repetition/model_frac"] == pytest.approx(repetition_frac(gen[:, -G:]).item())
    assert out["mechmon/repetition/data_frac"] == pytest.approx(repetition_frac(ids[:, -G:]).item())
    assert out["mechmon/repetition/excess"] == pytest.approx(
        out["mechmon/repetition/model_frac"] - out["mechmon/repetition/data_frac"]
    )


def test_repetition_probe_teacher_forced_uses_one_forward_argmax():
    model = tiny_gpt2().eval()
    ids, G = batch(), 4
    out = evaluate(RepetitionProbe(ids, gen_len=G, teacher_forced=True), model)
    argmax = model(input_ids=ids).logits[:, -G - 1 : -1].argmax(-1)
    assert out["mechmon/repetition/model_frac"] == pytest.approx(repetition_frac(argmax).item())


def test_apm_probe_matches_loop_on_eager_patterns():
    model = tiny_gpt2(attn="eager").eval()
    omega = torch.zeros(T, T)
    omega[torch.arange(1, T), torch.arange(0, T - 1)] = 1  # previous-token map
    omega[5:, 0] = 1
    out = evaluate(AttentionProgressProbe(omega, batch()), model)
    with torch.no_grad():
        patterns = model(input_ids=batch(), output_attentions=True).attentions
    rows = omega.bool().any(-1).expand(3, T)
    per_layer = [naive_apm(p, omega, rows).mean().item() for p in patterns]
    assert out["mechmon/apm/score/L00"] == pytest.approx(per_layer[0], abs=1e-5)
    assert out["mechmon/apm/score/L01"] == pytest.approx(per_layer[1], abs=1e-5)
    assert out["mechmon/apm/score"] == pytest.approx(max(per_layer), abs=1e-5)


def test_apm_probe_layer_subset_and_rows():
    model = tiny_gpt2().eval()
    omega = torch.eye(T)
    out = evaluate(AttentionProgressProbe(omega, batch(), rows=[4, 6], layers=[1]), model)
    assert set(out) == {"mechmon/apm/score", "mechmon/apm/score/L01", "mechmon/apm/loss_nats"}


@pytest.mark.parametrize(
    "given",
    [
        lambda ids: ids,
        lambda ids: {"input_ids": ids, "labels": ids},
        lambda ids: (ids, ids),
    ],
)
def test_first_training_batch_is_copied_and_cut_to_max_rows(given):
    ids = batch(rows=6)
    probe = CollapseProbe(max_rows=4)
    assert probe.needs_batch
    evaluate(probe, tiny_gpt2().eval(), training_batch=given(ids))
    assert not probe.needs_batch and probe.probe_batch.shape == (4, T)
    assert torch.equal(probe.probe_batch, ids[:4]) and probe.probe_batch.data_ptr() != ids.data_ptr()


def test_bad_batches_and_lengths_raise():
    with pytest.raises(TypeError, match="token ids"):
        CollapseProbe(torch.randn(2, 5))
    with pytest.raises(TypeError, match="attention_mask"):
        CollapseProbe({"input_ids": batch(), "attention_mask": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="no prompt"):
        evaluate(RepetitionProbe(batch(), gen_len=T), tiny_gpt2())
    with pytest.raises(ValueError, match="length"):
        evaluate(AttentionProgressProbe(torch.eye(T + 1), batch()), tiny_gpt2())
    with pytest.raises(ValueError, match="outside"):
        evaluate(CollapseProbe(batch(), positions=[2, T]), tiny_gpt2())


@pytest.mark.parametrize(
    "make",
    [
        lambda: CollapseProbe(positions=[3]),
        lambda: CollapseProbe(positions=[1, 1]),
        lambda: CollapseProbe(cos_level=1.5),
        lambda: CollapseProbe(exit_loss_drop=0),
        lambda: CollapseProbe(flat_evals=0),
        lambda: CollapseProbe(max_rows=0),
        lambda: RankProbe(max_dim=1),
        lambda: RankProbe(ratio=1.0),
        lambda: RepetitionProbe(gen_len=1),
        lambda: RepetitionProbe(level=0),
        lambda: AttentionProgressProbe(torch.zeros(4, 4)),
        lambda: AttentionProgressProbe(torch.eye(4), rows=[9]),
        lambda: AttentionProgressProbe(torch.ones(3, 4)),
        lambda: AttentionProgressProbe(torch.eye(4), layers=[]),
        lambda: AttentionProgressProbe(torch.eye(4), min_slope=-1),
    ],
)
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_apm_target_must_be_a_tensor():
    with pytest.raises(TypeError, match="tensor"):
        AttentionProgressProbe([[1, 0], [0, 1]])


def test_icl_score_is_the_late_minus_the_early_token_loss():
    from mechmon import ICLProbe

    model = tiny_gpt2()
    batch = torch.randint(1, VOCAB, (3, 48), generator=torch.Generator().manual_seed(3))
    out = mechmon.evaluate(ICLProbe(batch, early=5, late=40), model)
    with torch.no_grad():
        loss = F.cross_entropy(
            model.eval()(input_ids=batch).logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none"
        )
    early, late = loss[:, 3].mean().item(), loss[:, 38].mean().item()  # the t-th token is predicted at t - 2
    assert out["mechmon/icl/loss_early_nats"].item() == pytest.approx(early, rel=1e-5)
    assert out["mechmon/icl/score_nats"].item() == pytest.approx(late - early, rel=1e-4, abs=1e-6)


def test_icl_needs_a_long_context_and_long_training_rows():
    from mechmon import ICLProbe, Monitor

    with pytest.raises(ValueError, match=r"ICLProbe\(late=500, window=0\) needs contexts of 500 tokens.*late=48"):
        mechmon.evaluate(ICLProbe(), tiny_gpt2())
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    monitor = Monitor(model, optimizer=optimizer, probes=[ICLProbe(early=5, late=40)], schedule=1, log_dir=None)
    short, long = torch.randint(1, VOCAB, (2, 30)), torch.randint(1, VOCAB, (2, 48))
    with pytest.warns(UserWarning, match="no row of 40 or more real tokens"):
        for step, batch in enumerate([short, long], start=1):
            with monitor.step(step, batch):
                model(input_ids=batch, labels=batch).loss.backward()
                optimizer.step()
    monitor.close()
    assert monitor.probes[0].probe_batch.shape == (2, 48) and "mechmon/icl/score_nats" in monitor.latest
