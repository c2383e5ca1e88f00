"""MechMonitorCallback: mechmon in a Hugging Face ``Trainer``, a thin layer over the :class:`mechmon.Monitor` engine.

It maps the step (``state.global_step``), the batches (HF callbacks never see them: the engine reads the model's
inputs in a forward pre-hook, on scheduled steps only), where metrics go (mechmon's own TensorBoard event files:
keys added to ``logs`` in ``on_log`` would miss the ``report_to`` integrations, which run before user callbacks)
and where state is saved (``mechmon_state.pt`` beside each checkpoint, read back by
``trainer.train(resume_from_checkpoint=...)``).

Example:
    >>> from transformers import Trainer  # doctest: +SKIP
    >>> from mechmon import InductionProbe, LogitsProbe
    >>> from mechmon.integrations.hf import MechMonitorCallback
    >>> callback = MechMonitorCallback(probes=[InductionProbe(), LogitsProbe()], schedule=50)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mechmon.integrations.base import Integration
from mechmon.statefile import load_state, save_state

__all__ = ["MechMonitorCallback", "STATE_FILE"]

STATE_FILE = "mechmon_state.pt"


class MechMonitorCallback(TrainerCallback, Integration):
    """Live mechanistic monitoring of a Hugging Face ``Trainer`` run.

    Takes :class:`~mechmon.engine.Monitor`'s options by keyword (``probes``, ``schedule``, ``image_schedule``,
    ``adapter``, ``submodule``, ``rules``, ``on_alert``, ``namespace``, ``log_dir``, ``console``, ``budget``; see
    :class:`~mechmon.integrations.Integration`); the schedule reads ``state.global_step``. ``log_dir`` defaults to
    ``<output_dir>/mechmon`` (under ``logging_dir`` where the Trainer has one).

    Raises:
        TypeError, ValueError: on invalid arguments (the message names the argument).
        RuntimeError: in ``on_train_begin``, when no model is found or a probe needs a capture the model lacks.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        """Attach to the Trainer's model; on a resumed run, restore the state saved beside its checkpoint."""
        folder = getattr(args, "logging_dir", None) or args.output_dir
        log_dir = self.log_dir or Path(folder) / "mechmon"
        self.engine.attach(
            model,
            hook_optimizers=False,
            log_dir=log_dir,
            writes=state.is_world_process_zero,
            compiled_forward=bool(getattr(args, "torch_compile", False)),
            progress_bar=not getattr(args, "disable_tqdm", True),
            purge_step=state.global_step + 1 if state.global_step > 0 else None,  # a killed run's later steps hidden
        )
        if state.global_step > 0:
            self._restore(args, state)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Before the first micro-batch of a step: attach the streaming hooks if the step is scheduled."""
        self.begin(state.global_step)

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
            save_state(self.engine.state_dict(), folder / STATE_FILE)

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
        saved = load_state(path, "the monitor")
        if saved is None:
            return
        try:
            self.engine.load_state_dict(saved)
        except Exception as err:  # caveat: a state file from elsewhere must not stop the run
            reason = f"{type(err).__name__}: {err}"
            warnings.warn(
                f"mechmon: cannot restore {path} ({reason}); the monitor goes on with what it read", stacklevel=2
            )
