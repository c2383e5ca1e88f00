"""MechMonitorCallback: mechmon in a Hugging Face ``Trainer``, a thin layer over the :class:`mechmon.Monitor` engine.

It maps the step (``state.global_step``), the batches (HF callbacks never see them: the engine reads the model's
inputs in a forward pre-hook, on scheduled steps only), where metrics go (mechmon's own TensorBoard event files:
keys added to ``logs`` in ``on_log`` would miss the ``report_to`` integrations, which run before user callbacks)
and where state is saved (``mechmon_state.pt`` beside each checkpoint, read back by
``trainer.train(resume_from_checkpoint=...)``).

Example:
    >>> from transformers import Trainer  # doctest: +SKIP
    >>> from mechmon import InductionProbe, LogitsProbe
    >>> from mechmon.hf import MechMonitorCallback
    >>> callback = MechMonitorCallback(probes=[InductionProbe(), LogitsProbe()], schedule=50)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mechmon.adapters import AdapterSpec
from mechmon.alerts import Alert, Rule
from mechmon.checks import fail
from mechmon.engine import Monitor
from mechmon.probe import Probe
from mechmon.schedule import Schedule

__all__ = ["MechMonitorCallback", "STATE_FILE"]

STATE_FILE = "mechmon_state.pt"


class MechMonitorCallback(TrainerCallback):
    """Live mechanistic monitoring of a Hugging Face ``Trainer`` run.

    Args:
        probes: probe instances; default ``[InductionProbe(), LogitsProbe()]``.
        schedule: an int ``n`` (``every(n)``, plus step 1) or a :mod:`mechmon.schedule` predicate on
            ``state.global_step``.
        image_schedule: when to write ``[L, H]`` heatmaps; default every 5th evaluation of an ``every(n)`` schedule.
        adapter: an :class:`~mechmon.adapters.Adapter`, a factory ``fn(model) -> Adapter``, or ``None`` to discover it.
        model: dotted path of the submodule to monitor when the Trainer's model holds several.
        rules: extra alert rules on any ``mechmon/...`` key.
        on_alert: callables receiving each :class:`~mechmon.alerts.Alert` on the main process.
        namespace: first key segment (default ``"mechmon"``).
        log_dir: folder of the event files; default ``<output_dir>/mechmon`` (or under ``logging_dir`` if set).
        console: show a live rich table of the latest values.

    Raises:
        TypeError, ValueError: on invalid arguments (the message names the argument).
        RuntimeError: in ``on_train_begin``, when no model is found or a probe needs a capture the model lacks.
    """

    def __init__(
        self,
        probes: Sequence[Probe] | None = None,
        schedule: Schedule | int = 50,
        image_schedule: Schedule | int | None = None,
        adapter: AdapterSpec = None,
        model: str | None = None,
        rules: Sequence[Rule] = (),
        on_alert: Sequence[Callable[[Alert], Any]] = (),
        namespace: str = "mechmon",
        log_dir: str | Path | None = None,
        console: bool = False,
    ) -> None:
        if model is not None and not isinstance(model, str):
            fail("MechMonitorCallback", "model", model, "a dotted submodule path such as 'student', or None", TypeError)
        self.engine = Monitor(
            probes=probes, schedule=schedule, image_schedule=image_schedule, adapter=adapter, submodule=model,
            rules=rules, on_alert=on_alert, namespace=namespace, log_dir=log_dir, console=console,
        )  # fmt: skip
        self.log_dir = log_dir

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far (the last 1,000), oldest first."""
        return self.engine.alerts

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        """Attach to the Trainer's model; on a resumed run, restore the state saved beside its checkpoint."""
        folder = getattr(args, "logging_dir", None) or args.output_dir
        log_dir = self.log_dir or Path(folder) / "mechmon"
        self.engine.attach(model, hook_optimizers=False, log_dir=log_dir, writes=state.is_world_process_zero)
        if state.global_step > 0:
            self._restore(args, state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Before the first micro-batch of a step: attach the streaming hooks if the step is scheduled."""
        self.engine.begin_batch(state.global_step + 1)

    def on_pre_optimizer_step(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        """After clipping, before the optimizer step: the gradient probes of a scheduled step."""
        self.engine.before_optimizer_step(optimizer)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """After the optimizer step: the scheduled evaluation."""
        self.engine.after_optimizer_step(state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        """Save the monitor's state beside the checkpoint just written."""
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            torch.save(self.engine.state_dict(), folder / STATE_FILE)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Remove every hook, drain off-thread results and close the event files."""
        self.engine.close()

    def _restore(self, args: TrainingArguments, state: TrainerState) -> None:
        given = getattr(args, "resume_from_checkpoint", None)
        candidates = [Path(given)] if isinstance(given, (str, os.PathLike)) else []
        candidates.append(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        path = next((c / STATE_FILE for c in candidates if (c / STATE_FILE).is_file()), None)
        if path is None:
            warnings.warn(
                f"mechmon: resumed at step {state.global_step} but found no {STATE_FILE} in "
                f"{[str(c) for c in candidates]}; alert rules start afresh",
                stacklevel=2,
            )
            return
        self.engine.load_state_dict(torch.load(path, weights_only=False))
