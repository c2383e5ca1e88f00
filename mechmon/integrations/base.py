"""What every training-loop integration shares: the options, the engine, the step convention, alerts, close."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

from rapidfuzz import process

from mechmon.alerts import Alert
from mechmon.checks import fail
from mechmon.engine.monitor import Monitor

__all__ = ["Integration", "OPTIONS"]

OPTIONS = tuple(
    name for name in inspect.signature(Monitor.__init__).parameters if name not in ("self", "model", "optimizer")
)  # the options Monitor documents, written once: there


class Integration:
    """Base of the integrations (Lightning / Fabric, HF ``Trainer``): builds one :class:`Monitor` from the options.

    Args:
        **options: :class:`~mechmon.engine.Monitor`'s options, documented there (``probes``, ``schedule``,
            ``image_schedule``, ``adapter``, ``submodule``, ``rules``, ``on_alert``, ``namespace``, ``log_dir``,
            ``console``, ``budget``); the model and optimizer come from the framework. ``log_dir`` defaults to a
            folder each integration names. ``model=`` (a dotted submodule path) is the former name of
            ``submodule=``: it still works, with a ``FutureWarning``.

    Raises:
        TypeError: on an option ``Monitor`` does not take (the message names it and the nearest option), and as
            ``Monitor`` on invalid values (the message names the argument).
        ValueError: as ``Monitor``.
    """

    def __init__(self, **options: Any) -> None:
        owner = type(self).__name__
        if "model" in options:
            if not isinstance(options["model"], str):
                need = "a dotted submodule path such as 'student' (use submodule=)"
                fail(owner, "model", options["model"], need, TypeError)
            if "submodule" in options:
                fail(owner, "model", options["model"], "left out: it is the former name of submodule=", TypeError)
            warnings.warn(
                f"mechmon: {owner}(model=...) is now {owner}(submodule=...) (the same dotted path, as Monitor names "
                "it); model= will be removed",
                FutureWarning,
                stacklevel=2,
            )
            options["submodule"] = options.pop("model")
        for name in options:
            if name not in OPTIONS:
                nearest = process.extractOne(name, OPTIONS)
                hint = f" (did you mean {nearest[0]!r}?)" if nearest and nearest[1] >= 60 else ""
                raise TypeError(f"{owner}() got an unknown option {name!r}{hint}; the options are {list(OPTIONS)}")
        options.setdefault("log_dir", None)
        try:
            self.engine = Monitor(**options)
        except (TypeError, ValueError) as err:  # the message names the class the user called
            raise type(err)(str(err).replace("Monitor(", f"{owner}(", 1)) from None
        self.probes, self.namespace, self.log_dir = self.engine.probes, self.engine.config.namespace, options["log_dir"]

    def begin(self, done: int, batch: Any = None, steps: int = 1) -> None:
        """A micro-batch starts after ``done`` optimizer steps: it belongs to step ``done + 1`` (the convention).

        Frameworks count the steps made (``global_step``); the engine is told the step being made. ``batch`` and
        ``steps`` as :meth:`Monitor.begin_batch`.
        """
        self.engine.begin_batch(done + 1, batch, steps=steps)

    @property
    def alerts(self) -> list[Alert]:
        """Every alert raised so far (the last 1,000), oldest first."""
        return self.engine.alerts

    def close(self) -> None:
        """End the run: remove every hook, drain off-thread results, close the event files (idempotent)."""
        self.engine.close()
