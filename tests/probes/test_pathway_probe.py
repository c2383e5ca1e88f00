"""PathwayProbe on a tiny HF OLMoE: keys stamped with the probe step, and training goes on while distances compute."""

import threading
import time

import numpy as np
import pytest
import torch

from mechmon import MechMonitor, PathwayProbe, Threshold, every
from mechmon.adapters import HFAdapter
from mechmon.functional.pathway import (
    mean_edit_distance,
    pathway_consistency,
    pathway_selection,
    routing_embeddings,
    sample_routing,
    serialize_pathways,
)
from mechmon.naming import KEY_RE
from tests.helpers import VOCAB, TinyLM, hook_count, make_trainer, read_events, scalar_steps, tiny_moe, token_loader

GROUPS = ["json", "json", "json", "email", "email", "email"]


def probe_set():
    return torch.randint(1, VOCAB, (6, 16), generator=torch.Generator().manual_seed(5))


def test_worker_result_matches_the_formulas_on_the_model_routing():
    model = tiny_moe("olmoe").eval()
    probe = PathwayProbe(probe_set(), groups=GROUPS)
    from mechmon.engine import snapshot_forward

    adapter = HFAdapter(model)
    probe.attach(model, adapter, torch.device("cpu"))
    snapshot_forward(probe, adapter)
    losses = probe.compute()
    probe.finish({"weights": probe.host_inputs()["weights"].numpy()}, step=7)
    [(step, out)] = probe.late_results(wait=True)
    probe.close()
    assert step == 7
    seen = {}
    gates = [model.get_submodule(f"model.layers.{i}.mlp.gate") for i in range(2)]
    handles = [g.register_forward_hook(lambda m, a, o, i=i: seen.__setitem__(i, o[0])) for i, g in enumerate(gates)]
    with torch.no_grad():
        model(input_ids=probe_set())
    for h in handles:
        h.remove()
    mask = torch.ones(6, 16)
    weights = torch.stack([sample_routing(seen[i], mask) for i in range(2)], dim=1)
    pathways, per_layer = serialize_pathways(*(t.numpy() for t in pathway_selection(weights, 0.7)))
    assert out["mechmon/moe_pathway/edit_dist/json"] == pytest.approx(mean_edit_distance(pathways[:3]))
    assert out["mechmon/moe_pathway/edit_dist/email.L01"] == pytest.approx(mean_edit_distance(per_layer[1][3:]))
    # the memorized subset: distances over memorized rows only, none for a group with fewer than two
    mem = probe._distances(weights.numpy(), np.array([True, False, True, True, False, False]))
    assert mem["mechmon/moe_pathway/edit_dist/json.mem"] == pytest.approx(mean_edit_distance(pathways[0:3:2]))
    assert "mechmon/moe_pathway/edit_dist/email.mem" not in mem
    assert {k for k in losses if "loss_nats" in k} == {
        "mechmon/moe_pathway/loss_nats/json",
        "mechmon/moe_pathway/loss_nats/email",
    }
    # consistency from the gate weights the model holds, on the same routing weights
    router = torch.stack([g.weight.detach() for g in gates])
    smooth, paper = pathway_consistency(routing_embeddings(weights, router))
    assert losses["mechmon/moe_pathway/smoothness/json"].item() == pytest.approx(smooth[:3].mean().item(), abs=1e-6)
    assert losses["mechmon/moe_pathway/consistency_paper/email"].item() == pytest.approx(
        paper[3:].mean().item(), abs=1e-6
    )


def test_memorization_criterion_in_the_probe_and_its_state_round_trip():
    """epsilon_at freezes ε per group; memorized share, .mem means, revocations; state survives a new probe."""
    probe = PathwayProbe(probe_set(), groups=GROUPS, epsilon_at=2, window=2)
    probe._distances = lambda weights, memorized: {"mem": float(memorized.sum())}
    weights = torch.full((6, 2, 8), 1 / 8).numpy()
    smooth = np.linspace(0.1, 0.6, 6)

    def feed(loss, step):
        host = {"weights": weights, "loss": np.asarray(loss), "smooth": smooth, "consist": smooth}
        out = probe.finish(host, step)
        probe.late_results(wait=True)
        return out

    assert feed([1.0] * 6, 1) == {}  # ε not frozen yet: no memorization keys
    out = feed([1.0, 2.0, 3.0, 0.5, 0.6, 5.0], 2)  # ε frozen: json 22.5 % quantile = 1.45, email 0.545
    assert out["mechmon/moe_pathway/epsilon/json"] == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.225))
    # the window (2) counts losses from before ε was frozen: row 0 was 1.0 twice -> in; row 3 moved 1.0 -> 0.5 -> out
    assert out["mechmon/moe_pathway/memorized_frac/json"] == pytest.approx(1 / 3)
    assert out["mechmon/moe_pathway/memorized_frac/email"] == 0
    out = feed([1.0, 2.0, 3.0, 0.5, 0.6, 5.0], 3)  # row 3 now flat too and below its group's ε (0.545)
    assert out["mechmon/moe_pathway/memorized_frac/json"] == pytest.approx(1 / 3)
    assert out["mechmon/moe_pathway/memorized_frac/email"] == pytest.approx(1 / 3)
    assert out["mechmon/moe_pathway/smoothness/email.mem"] == pytest.approx(smooth[3])
    saved = probe.state_dict()
    probe.close()

    again = PathwayProbe(probe_set(), groups=GROUPS, epsilon_at=2, window=2)
    again._distances = probe._distances
    again.load_state_dict(saved)
    probe = again
    out = feed([3.0, 2.0, 3.0, 0.5, 0.6, 5.0], 4)  # row 0 above ε + δ: revoked; ε stays frozen from the checkpoint
    assert out["mechmon/moe_pathway/memorized_frac/json"] == 0
    assert out["mechmon/moe_pathway/revoked/json"] == 1 and out["mechmon/moe_pathway/revoked/email"] == 0
    assert out["mechmon/moe_pathway/epsilon/json"] == pytest.approx(np.quantile([1.0, 2.0, 3.0], 0.225))
    probe.close()


def test_training_goes_on_while_distances_compute(tmp_path):
    """The worker waits until training has made two more steps; a blocked training thread would fail the test."""
    step_now = {"step": 0}
    original = PathwayProbe._distances

    def slow(self, weights, memorized=None):
        start, deadline = step_now["step"], time.monotonic() + 20  # the deadline turns a blocked run into a failure
        while step_now["step"] < start + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        return {
            **original(self, weights, memorized),
            "mechmon/moe_pathway/steps_during": float(step_now["step"] - start),
        }

    class Clock(pl_callback()):
        def on_train_batch_end(self, trainer, *args):
            step_now["step"] = trainer.global_step

    probe = PathwayProbe(probe_set(), groups=GROUPS, epsilon_at=1)
    probe._distances = slow.__get__(probe)
    late_marker = Threshold("mechmon/moe_pathway/edit_dist/json", -1.0, name="late_marker")  # fires on the first
    mon = MechMonitor(probes=[probe], schedule=every(4), rules=[late_marker])
    model = TinyLM(tiny_moe("olmoe"))
    make_trainer(tmp_path, [mon, Clock()], max_steps=9).fit(model, token_loader())
    acc = read_events(tmp_path / "tb")
    # forwards at 1, 4, 8; each result is written at the step of its own forward, computed while >= 2 steps ran
    assert scalar_steps(acc, "mechmon/moe_pathway/edit_dist/json") == [1, 4, 8]
    assert all(e.value >= 2 for e in acc.Scalars("mechmon/moe_pathway/steps_during")[:2])
    assert scalar_steps(acc, "mechmon/alerts/late_marker") == [1]  # an alert on a late result marks its own step
    keys = ["edit_dist/email.L00", "edit_dist/email.L01", "loss_nats/json", "smoothness/json", "memorized_frac/json"]
    for key in ["edit_dist/json", *keys, "consistency_paper/email", "epsilon/email", "revoked/json"]:
        assert KEY_RE.match(f"mechmon/moe_pathway/{key}") and f"mechmon/moe_pathway/{key}" in acc.Tags()["scalars"]
    assert not mon.engine.disabled and hook_count(model) == 0 and probe._pool is None
    # one panel group for the probe, with charts for the stats that arrive late (the layout is written once)
    [layout] = acc.Tensors("custom_scalars__config__")
    text = layout.tensor_proto.string_val[0].decode("latin-1")
    assert all(f"moe_pathway: {stat}" in text for stat in ["edit_dist", "memorized_frac", "smoothness", "loss_nats"])


def pl_callback():
    import lightning.pytorch as pl

    return pl.Callback


def test_busy_worker_skips_the_round():
    probe = PathwayProbe(probe_set(), groups=GROUPS)
    gate = threading.Event()
    probe._distances = lambda weights, memorized: gate.wait(5) and {}
    weights = torch.full((6, 2, 8), 1 / 8).numpy()
    probe.finish({"weights": weights}, 1)
    probe.finish({"weights": weights}, 2)  # the first round is still running
    assert probe.skipped == 1 and probe.late_results() == []
    gate.set()
    assert [s for s, _ in probe.late_results(wait=True)] == [1]
    probe.close()


@pytest.mark.parametrize(
    "kwargs,error",
    [
        ({"batch": None}, TypeError),
        ({"groups": ["a"]}, ValueError),
        ({"tau": 0}, ValueError),
        ({"max_pairs": 0}, ValueError),
        ({"epsilon": 1.0, "epsilon_at": 5}, ValueError),
        ({"epsilon": -1.0}, ValueError),
        ({"epsilon": {"json": 1.0}}, ValueError),
        ({"epsilon_at": -1}, ValueError),
        ({"epsilon_quantile": 1.0}, ValueError),
        ({"delta": -0.1}, ValueError),
        ({"window": 0}, ValueError),
        ({"smoothness_mode": "up"}, ValueError),
    ],
)
def test_bad_arguments(kwargs, error):
    with pytest.raises(error):
        PathwayProbe(**{"batch": probe_set(), "groups": GROUPS, **kwargs})
