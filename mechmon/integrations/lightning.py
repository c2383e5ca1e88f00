"""MechMonitor: the Lightning callback (Trainer and Fabric) over the :class:`mechmon.Monitor` engine.

It maps four things and nothing else: the step (``trainer.global_step``, or Fabric's optimizer steps), the batches
(Lightning hands them over; under Fabric the engine reads the model's inputs), where metrics go (the trainer's or
Fabric's loggers, ``callback_metrics``) and where state is saved (the checkpoint's callback state, or Fabric's
``fabric.save`` state dict).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.loggers import TensorBoardLogger
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from mechmon.integrations.base import Integration

__all__ = ["MechMonitor"]


class MechMonitor(Callback, Integration):
    r"""Live mechanistic monitoring of a Lightning ``Trainer`` fit or a Fabric loop.

    Takes :class:`~mechmon.engine.Monitor`'s options by keyword (``probes``, ``schedule``, ``image_schedule``,
    ``adapter``, ``submodule``, ``rules``, ``on_alert``, ``namespace``, ``log_dir``, ``console``, ``budget``; see
    :class:`~mechmon.integrations.Integration`). ``log_dir`` is used only when there is no TensorBoardLogger;
    default ``<default_root_dir>/mechmon`` (``runs/mechmon`` under Fabric).

    Raises:
        TypeError, ValueError: on invalid arguments (the message names the argument).
        RuntimeError: at fit start, when no model is found, several trainable ones are, or a probe needs a capture the
            model lacks.

    Example:
        >>> from mechmon import MechMonitor, InductionProbe
        >>> monitor = MechMonitor(probes=[InductionProbe(period=20)], schedule=100)
        >>> monitor.state_key
        "MechMonitor{'namespace': 'mechmon'}"

    Logged metrics:
        Every probe's keys (see each probe's table) at each scheduled step, ``<ns>/alerts/<rule>`` = 1 at the step a
        rule fires, a text entry ``<ns>/alerts`` with the reason, and ``[L, H]`` heatmap images at
        ``image_schedule``. Under the Trainer all are mirrored into ``trainer.callback_metrics``.
    """

    _step_at_start = -1  # Trainer: global_step when the batch began
    _steps_per_batch = 1  # Trainer: optimizer steps the last stepping batch made (manual optimization counts each)
    _fabric_steps = 0  # Fabric: optimizer steps counted (restored by load_state_dict)

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(namespace=self.namespace)

    # -- Lightning Trainer ---------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after configure_model and the strategy's setup: the parameters are the ones training updates (tensor
        # parallel and FSDP replace them), on their device; a restored state waits in the engine until now
        bar = trainer.progress_bar_callback
        self.engine.attach(
            pl_module,
            hook_optimizers=False,
            listeners=[lambda values, step: trainer.callback_metrics.update(_tensors(values))],
            progress_bar=bar is not None,
            **self._sinks(trainer.loggers, trainer.is_global_zero, Path(trainer.default_root_dir) / "mechmon"),
        )
        if bar is not None and self.engine.view is not None and not self.engine.view.live_enabled:
            _show_in_bar(bar, self.engine.view)

    def _sinks(self, loggers: Sequence[Any], writes: bool, default_dir: str | Path) -> dict[str, Any]:
        """A TensorBoardLogger's writer when there is one (scalars through the loggers), else our own folder."""
        tb = next((lg for lg in loggers if isinstance(lg, TensorBoardLogger)), None)
        experiment = tb.experiment if tb is not None and writes else None  # .experiment creates files: rank 0 only
        log_dir = None if tb is not None else (self.log_dir or default_dir)
        return {"loggers": list(loggers), "experiment": experiment, "log_dir": log_dir, "writes": writes}

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_at_start = trainer.global_step
        self.begin(trainer.global_step, batch, steps=self._steps_per_batch)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.engine.before_optimizer_step(optimizer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.engine.end_batch(batch)
        if trainer.global_step != self._step_at_start:  # right after an optimizer step (dedups accumulation)
            self._steps_per_batch = max(1, trainer.global_step - self._step_at_start)
            self.engine.after_optimizer_step(trainer.global_step, steps=self._steps_per_batch)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.engine.close()
        bar = trainer.progress_bar_callback
        if bar is not None and "get_metrics" in vars(bar):  # our wrapper: the bar's own method again
            del bar.get_metrics

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.engine.close()

    # -- Lightning Fabric (it calls these two by itself; call close() when the loop ends) ------------------
    def on_after_setup(self, fabric: Any, module: torch.nn.Module) -> None:
        """Fabric: attach to the module ``fabric.setup`` returned; prepare step 1."""
        self.engine.attach(module, **self._sinks(fabric.loggers, fabric.is_global_zero, "runs/mechmon"))
        self.begin(self._fabric_steps)

    def on_after_optimizer_step(self, strategy: Any, optimizer: torch.optim.Optimizer) -> None:
        """Fabric: count the optimizer step, evaluate if it is scheduled, prepare the next one."""
        self._fabric_steps += 1
        self.engine.after_optimizer_step(self._fabric_steps)
        self.begin(self._fabric_steps)

    # -- checkpointing -------------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**self.engine.state_dict(), "fabric_steps": self._fabric_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._fabric_steps = int(state_dict.get("fabric_steps", self._fabric_steps))
        self.engine.load_state_dict(state_dict)
        if self.engine.adapter is not None and self._fabric_steps:  # Fabric: resumed after setup
            self.begin(self._fabric_steps)


def _show_in_bar(bar: Any, view: Any) -> None:
    """Show the last alert (first) and the monitor's headline value in a Lightning progress bar (TQDM and Rich)."""
    if "get_metrics" in vars(bar):  # already wrapped (a second fit with the same trainer)
        return
    own = bar.get_metrics

    def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        try:
            mine = view.bar_items()
        except Exception:  # caveat: the bar refreshes inside the training loop; ours must never break it
            mine = {}
        first = {"alert": mine.pop("alert")} if "alert" in mine else {}  # an alert first: bars are cut at the width
        return {**first, **own(trainer, pl_module), **mine}

    bar.get_metrics = get_metrics
    view.printer = lambda: getattr(getattr(bar, "progress", None), "console", None)  # RichProgressBar's own console


def _tensors(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v) for k, v in values.items()}
