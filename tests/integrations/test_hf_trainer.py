"""A real Hugging Face ``Trainer`` fit of a tiny GPT-2 with MechMonitorCallback: event files read back, resume."""

import pytest
import torch
from torch.utils.data import Dataset

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, NLMProbe, Threshold, every
from mechmon.functional.induction import induction_scores
from mechmon.hf import STATE_FILE, MechMonitorCallback
from tests.helpers import CTX, VOCAB, hook_count, plant, read_events, scalar_steps, tiny_gpt2

transformers = pytest.importorskip("transformers")


class Tokens(Dataset):
    def __init__(self, n=64, seed=0):
        self.ids = torch.randint(1, VOCAB, (n, CTX), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, callback, max_steps, resume=None, accumulation=1, **extra):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        learning_rate=1e-3,
        save_steps=4,
        logging_steps=100,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        **extra,
    )
    model = tiny_gpt2()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume)
    return model


def make(log_dir, **kwargs):
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), NLMProbe(), CollapseProbe()]
    return MechMonitorCallback(probes=probes, schedule=every(2), rules=[marker], log_dir=log_dir, **kwargs)


def test_trainer_fit_writes_event_files_and_resumes_without_refiring(tmp_path):
    first = make(None)
    model = train(tmp_path, first, max_steps=4, accumulation=2)
    acc = read_events(tmp_path / "out" / "mechmon")  # the default folder under the output dir
    for key in [
        "induction/score_max",
        "logits/norm_mean",
        "logits/accuracy_frac",
        "nlm/cos_grad",
        "repr_collapse/mean_cos",
    ]:
        assert scalar_steps(acc, f"mechmon/{key}") == [1, 2, 4], key  # once per optimizer step, accumulation 2
    assert all(e.value != 0 for e in acc.Scalars("mechmon/nlm/cos_grad"))  # gradients seen before the step
    assert scalar_steps(acc, "mechmon/alerts/marker") == [1]
    assert (tmp_path / "out" / "checkpoint-4" / STATE_FILE).is_file()
    assert hook_count(model) == 0 and not first.engine.disabled and [a.rule for a in first.alerts] == ["marker"]
    # the value logged at step 4 is the final model's: its eager attention probabilities on the probe's batch
    model.eval().set_attn_implementation("eager")
    with torch.no_grad():
        patterns = model(input_ids=first.engine.probes[0].probe_batch, output_attentions=True).attentions
    expected = max(float(induction_scores(p.float(), 10).max()) for p in patterns)
    logged = {e.step: e.value for e in acc.Scalars("mechmon/induction/score_max")}
    # measured: equal to the last bit at step 4; the step-1 value differs by 4e-5 relative (4 steps at lr 1e-3)
    assert logged[4] == pytest.approx(expected, rel=1e-6) and logged[1] != pytest.approx(expected, rel=1e-6)

    second = make(tmp_path / "resumed")
    train(tmp_path, second, max_steps=8, resume=str(tmp_path / "out" / "checkpoint-4"), accumulation=2)
    acc = read_events(tmp_path / "resumed")
    assert scalar_steps(acc, "mechmon/logits/norm_mean") == [6, 8]
    assert "mechmon/alerts/marker" not in acc.Tags()["scalars"]  # restored: the marker does not fire again
    assert [(a.rule, a.step) for a in second.alerts] == [("marker", 1)]


@pytest.mark.parametrize("damage", ["planted", "truncated", "garbage", "a list"])
def test_a_state_file_from_elsewhere_never_runs_code_nor_stops_the_resume(tmp_path, damage):
    train(tmp_path, make(None), max_steps=4)
    path = tmp_path / "out" / "checkpoint-4" / STATE_FILE
    marker = tmp_path / "pwned"
    if damage == "planted":
        plant(path, marker)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 40)
    else:
        torch.save([1, 2, 3], path)
    second = make(tmp_path / "resumed")
    with pytest.warns(UserWarning, match=rf"cannot use .*{STATE_FILE}.*the monitor starts afresh"):
        train(tmp_path, second, max_steps=6, resume=str(path.parent))
    assert not marker.exists()
    assert scalar_steps(read_events(tmp_path / "resumed"), "mechmon/logits/norm_mean") == [6]


class HalfBad(Tokens):
    """Half the rows hold a token id past the vocabulary: a training forward raises within the first steps."""

    def __init__(self):
        super().__init__()
        self.ids[32:, 5] = VOCAB + 5


def test_a_training_forward_that_raises_leaves_no_hook_on_the_model(tmp_path):
    callback = MechMonitorCallback(probes=[LogitsProbe(), CollapseProbe()], schedule=every(1), log_dir=tmp_path / "tb")
    model = tiny_gpt2()
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=4,
                                          report_to=[], use_cpu=True, disable_tqdm=True)  # fmt: skip
    with pytest.raises(IndexError):
        transformers.Trainer(model=model, args=args, train_dataset=HalfBad(), callbacks=[callback]).train()
    assert hook_count(model) == 0  # the step's capture, input and feeding hooks went with the exception
    callback.close()  # flushes the event files (the interpreter's exit does it too)
    steps = scalar_steps(read_events(tmp_path / "tb"), "mechmon/logits/norm_mean") if callback.engine.latest else []
    assert steps == list(range(1, len(steps) + 1))  # every step before the failing one


def test_torch_compile_true_keeps_snapshot_probes_exact_and_says_why_the_logits_are_not_measured(tmp_path):
    """HF ``torch_compile=True`` calls its compiled wrapper, which the callback never sees: no eager place to read a
    batch. Snapshot probes equal the uncompiled run; the logits are NaN with one hint and no alert; a probe waiting
    for a training batch is disabled with the fix."""

    def run(folder, **extra):
        probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), CollapseProbe()]
        callback = MechMonitorCallback(probes=probes, schedule=every(2), log_dir=None)
        model = train(tmp_path / folder, callback, max_steps=4, **extra)
        assert hook_count(model) == 0
        return callback

    plain = run("plain").engine.latest
    try:
        with pytest.warns(UserWarning, match="probe 'repr_collapse' takes its probe batch") as seen:
            compiled = run("compiled", torch_compile=True, torch_compile_backend="eager")
    finally:  # accelerate keeps its dynamo setting in a process-wide state: later Accelerators would compile
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    assert any("no full logits reached it" in str(w.message) for w in seen)
    assert [a.rule for a in compiled.alerts] == ["probe_failed"] and "repr_collapse" in compiled.engine.disabled
    induction = {k: v for k, v in plain.items() if k.startswith("mechmon/induction/")}
    assert induction and {k: compiled.engine.latest[k] for k in induction} == pytest.approx(induction, rel=1e-5)
    assert all(v != v for k, v in compiled.engine.latest.items() if k.startswith("mechmon/logits/"))
