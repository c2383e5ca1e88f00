import math

import pytest
import torch

from mechmon.probes.logits import LogitsProbe, default_targets
from tests.helpers.memory import LiveBytes


def naive(logits_NV, targets_N, dtype):
    rows = [i for i in range(len(targets_N)) if targets_N[i] != -100]
    collapsed = zero = 0
    norms, gaps = [], []
    for i in range(len(targets_N)):
        if targets_N[i] == -100:
            continue
        z = logits_NV[i].to(dtype)
        s = torch.exp(z - z.max()).sum()
        collapsed += int(s == 1)
        zero += int(torch.nn.functional.cross_entropy(z[None], targets_N[i : i + 1]) == 0)
        norms.append(float(logits_NV[i].float().norm()))
        top = sorted(logits_NV[i].float().tolist(), reverse=True)
        gaps.append(top[0] - top[1])
    n = len(rows)
    return {
        "softmax_collapse_frac": collapsed / n,
        "zero_loss_frac": zero / n,
        "norm_mean": sum(norms) / n,
        "norm_max": max(norms),
        "gap_mean_nats": sum(gaps) / n,
    }


def logits_with_collapse(N, V, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=gen)
    logits[: N // 2, 0] += 80.0  # far past any fp64 absorption threshold
    return logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_classifier_logits_against_naive(dtype):
    logits = logits_with_collapse(20, 7).to(dtype)
    targets = torch.zeros(20, dtype=torch.long)
    targets[3] = -100
    probe = LogitsProbe()
    probe.update({"logits": logits}, (None, targets))
    out = {k.split("/", 2)[2]: v.item() for k, v in probe.compute().items()}
    ref = naive(logits, targets, dtype)
    for key, value in ref.items():
        assert out[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    assert out["softmax_collapse_frac"] == pytest.approx(9 / 19)


def test_lm_batch_shift_and_two_updates_equal_one():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (4, 9), generator=gen)
    logits = torch.randn(4, 9, 11, generator=gen) * 20
    one, two = LogitsProbe(), LogitsProbe()
    one.update({"logits": logits}, ids)
    two.update({"logits": logits[:2]}, ids[:2])
    two.update({"logits": logits[2:]}, {"input_ids": ids[2:]})
    for (k, a), b in zip(one.compute().items(), two.compute().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    ref = naive(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), torch.float32)
    assert one.compute()["mechmon/logits/norm_mean"].item() == pytest.approx(ref["norm_mean"], rel=1e-5)
    state = one.rows
    one.reset()
    assert one.rows is state and state.item() == 0


def test_loss_dtype_changes_the_absorption_test():
    logits = torch.zeros(1, 5)
    logits[0, 0] = 12.0  # collapses in fp16 (threshold band 7.6-10) but not in fp32
    fp16, fp32 = LogitsProbe(loss_dtype=torch.float16), LogitsProbe(loss_dtype=torch.float32)
    for probe in (fp16, fp32):
        probe.update({"logits": logits}, (None, torch.zeros(1, dtype=torch.long)))
    assert fp16.compute()["mechmon/logits/softmax_collapse_frac"].item() == 1.0
    assert fp32.compute()["mechmon/logits/softmax_collapse_frac"].item() == 0.0
    assert fp16.compute()["mechmon/logits/softmax_collapse_frac_fp64"].item() == 0.0


def test_targets_and_validation():
    ids = torch.ones(2, 3, dtype=torch.long)
    assert default_targets({"labels": ids, "input_ids": ids * 2})[0] is ids
    assert default_targets((ids, ids))[1] is False
    with pytest.raises(TypeError, match="targets=fn"):
        default_targets("text")
    with pytest.raises(TypeError):
        LogitsProbe(loss_dtype=torch.int32)
    with pytest.raises(ValueError):
        LogitsProbe(collapse_level=0.01, warning_level=0.5)
    empty = LogitsProbe().compute()  # no rows seen: NaN (a non_finite alert), never a plausible 0
    assert all(math.isnan(empty[f"mechmon/logits/{k}"].item()) for k in ["softmax_collapse_frac", "norm_max"])


def test_precursor_and_accuracy():
    from mechmon.functional.logits import measured_absorption_gap

    threshold = measured_absorption_gap(9, torch.float32, torch.device("cpu")).item()
    logits = torch.zeros(4, 9)
    logits[:, 0] = torch.tensor([threshold + 0.5, threshold - 1.0, threshold - 3.0, 1.0])
    targets = torch.tensor([0, 0, 3, 0])
    probe = LogitsProbe(margin=2.0)  # rows 0 and 1 are within 2 nats
    probe.update({"logits": logits}, (None, targets))
    out = probe.compute()
    assert out["mechmon/logits/absorb_gap_nats"].item() == pytest.approx(threshold)
    assert out["mechmon/logits/gap_frac_near_absorb"].item() == 0.5  # rows 0 and 1
    assert out["mechmon/logits/accuracy_frac"].item() == 0.75
    assert out["mechmon/logits/softmax_collapse_frac"].item() == 0.25
    with pytest.raises(ValueError):
        LogitsProbe(margin=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_extra_peak_memory_of_an_update_is_bounded_by_64_mib_plus_a_tenth_of_the_logits(dtype):
    T, V = 4096, 8192  # float32: 128 MiB of logits; a whole-tensor float64 copy alone would be 256 MiB
    logits = torch.randn(1, T, V, generator=torch.Generator().manual_seed(0)).to(dtype)
    tokens = torch.randint(0, V, (1, T), generator=torch.Generator().manual_seed(1))
    probe = LogitsProbe()
    probe.update({"logits": logits[:, :16]}, tokens[:, :16])  # warm-up: the absorption gap is measured once
    states = [t for t, _ in probe.states().values()]
    with LiveBytes([logits, tokens, *states]) as mode:
        probe.update({"logits": logits}, tokens)
    bound = 64 * 2**20 + logits.numel() * logits.element_size() // 10
    assert 0 < mode.peak <= bound, (mode.peak / 2**20, bound / 2**20)
    out = probe.compute()
    assert out["mechmon/logits/norm_mean"].item() == pytest.approx(
        logits[0, :-1].float().norm(dim=-1).mean().item(), rel=1e-4
    )


@pytest.mark.parametrize("given", [True, False], ids=["batch given", "batch read from the model's inputs"])
def test_a_monitored_step_keeps_no_logits_alive_into_the_backward(given):
    from transformers import AutoModelForCausalLM, GPT2Config

    from mechmon import Monitor

    V = 32768  # [4, 256, V] float32 logits: 128 MiB, twice the allowance
    cfg = GPT2Config(vocab_size=V, n_positions=256, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = torch.randint(1, V, (4, 256), generator=torch.Generator().manual_seed(0))
    monitor = Monitor(model, optimizer=optimizer, probes=[LogitsProbe()], schedule=1, log_dir=None, console=False)

    def step(n=None):
        known = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None), batch]
        with LiveBytes(known) as live:
            if n is None:
                model(input_ids=batch, labels=batch).loss.backward()
            else:
                with monitor.step(n, batch if given else None):
                    model(input_ids=batch, labels=batch).loss.backward()
                    optimizer.step()
        optimizer.zero_grad(set_to_none=False)
        return live.peak

    step(1), step()  # warm-up: gradients allocated, the absorption gap measured
    plain, watched = step(), step(2)
    logits = 4 * 256 * V * 4
    assert monitor.latest["mechmon/logits/loss_nats"] == pytest.approx(math.log(V), rel=0.05)
    monitor.close()
    assert watched - plain <= 64 * 2**20 + logits // 10, ((watched - plain) / 2**20, logits / 2**20)
