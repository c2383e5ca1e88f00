"""Console output through rich: one line per alert, and a live panel of the run in an interactive terminal.

The panel (alerts first, then the step, speed and training loss, then each probe's headline) is drawn only on a
terminal that nothing else draws on: when a progress bar owns it (Lightning's TQDM or Rich bar, the HF Trainer's
tqdm bars) the monitor's values go into that bar instead and alert lines are written through tqdm, above the bars.
Piped or redirected output gets the alert lines only, as they fire.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mechmon.alerts import Alert

__all__ = ["ConsoleView", "LOSS_KEY"]

_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}
LOSS_KEY = "logits/loss_nats"  # the training loss LogitsProbe measures on a scheduled step (no extra sync)
_ALERT_ROWS = 5


def _write_mode() -> contextlib.AbstractContextManager:
    """Tqdm's external write mode (bars cleared, the line written, bars redrawn) when tqdm is installed."""
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext()
    return tqdm.external_write_mode()


class ConsoleView:
    """Alert lines and, in an interactive terminal, a live panel of the run.

    Args:
        live: ``True`` / ``False`` force the panel on or off; ``None`` (default) draws it only when ``console`` is
            an interactive terminal and no progress bar owns it (``bar_owned``).
        console: a rich ``Console``; a new one on stderr by default.
        headlines: the keys shown first in the panel (each probe's headline stat).
        namespace: first key segment, cut from the names shown.
        bar_owned: a progress bar draws on this terminal (the panel is then off unless ``live=True``).

    ``printer``: where alert lines go; an integration whose progress bar has its own rich console (Lightning's
    ``RichProgressBar``) sets it so the lines print above the bar instead of breaking it.
    """

    printer: Callable[[], Console | None] = staticmethod(lambda: None)

    def __init__(
        self,
        live: bool | None = None,
        console: Console | None = None,
        headlines: Sequence[str] = (),
        namespace: str = "mechmon",
        bar_owned: bool = False,
    ) -> None:
        self.console = console or Console(stderr=True)
        interactive = self.console.is_terminal and not self.console.is_dumb_terminal
        self.live_enabled = live if live is not None else interactive and not bar_owned
        self.headlines, self.prefix = list(headlines), f"{namespace}/"
        self._live: Live | None = None
        self._latest: dict[str, float] = {}
        self._alerts: list[Alert] = []
        self._step, self._speed = 0, float("nan")
        self._clock: tuple[int, float] | None = None

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record the latest values (unscoped keys), the speed since the last call, and refresh the panel."""
        now = time.perf_counter()
        if self._clock is not None and step > self._clock[0]:
            self._speed = (step - self._clock[0]) / max(now - self._clock[1], 1e-9)
        self._clock, self._step = (step, now), step
        self._latest.update({k: v for k, v in scalars.items() if k.count("/") == 2})
        if self.live_enabled:
            if self._live is None:
                self._live = Live(self.panel(), console=self.console, refresh_per_second=2, transient=False)
                self._live.start()
            self._live.update(self.panel())

    def alert(self, alert: Alert) -> None:
        """Print one alert line (above the live panel or the progress bars)."""
        self._alerts.append(alert)
        style = _STYLE.get(alert.severity, "")
        line = f"[{style}]mechmon {alert.severity} at step {alert.step}: {alert.rule}[/] - {alert.reason}"
        line += f"\n  [dim]what to do: {alert.advice}[/]" if alert.advice else ""
        owner = self.printer()
        with _write_mode() if owner is None else contextlib.nullcontext():
            (owner or self.console).print(line, highlight=False, soft_wrap=True)  # each alert printed, also in logs
        if self._live is not None:
            self._live.update(self.panel())

    def bar_items(self) -> dict[str, str]:
        """Short items for a progress bar's postfix: the last step's alerts (all named), then the first headline."""
        items = {}
        if self._alerts:
            step = self._alerts[-1].step
            rules = [a.rule for a in self._alerts if a.step == step]
            many = f"{len(rules)} alerts@{step}: " if len(rules) > 1 else ""
            items["alert"] = f"{many}{', '.join(rules)}" + ("" if many else f"@{step}")
        for key in [k for k in self.headlines if k in self._latest][:1]:
            items[self._name(key).split("/")[0]] = f"{self._latest[key]:.3g}"
        return items

    def _name(self, key: str) -> str:
        return key.removeprefix(self.prefix)

    def panel(self) -> Group:
        """The live panel, sized to the console: alerts, then step/speed/loss, then headline stats, then others."""
        width, height = self.console.size
        head = Text.assemble(("mechmon", "bold"), f"  step {self._step}")
        if self._speed == self._speed:  # not NaN
            head.append(f"  {self._speed:.2f} steps/s")
        loss = self._latest.get(self.prefix + LOSS_KEY)
        if loss is not None:
            head.append(f"  train loss {loss:.4g}")
        alerts = Table(box=None, show_header=False, pad_edge=False, width=width, padding=(0, 1, 0, 0))
        alerts.add_column(justify="right", no_wrap=True, min_width=len(str(self._step)))
        alerts.add_column(no_wrap=True, overflow="ellipsis")
        for alert in self._alerts[-_ALERT_ROWS:]:
            style = _STYLE.get(alert.severity, "")
            alerts.add_row(str(alert.step), Text.from_markup(f"[{style}]{alert.rule}[/] {alert.reason}"))
        parts: list = [head, alerts] if self._alerts else [head, Text("no alerts", style="dim")]
        # the title, the alert rows (or "no alerts"), the table's header and rule, its caption, the cursor line
        room = max(height - 5 - max(len(self._alerts[-_ALERT_ROWS:]), 1), 1)
        keys = [k for k in self.headlines if k in self._latest]
        keys += sorted(k for k in self._latest if k not in keys)
        metrics = Table(box=box.SIMPLE_HEAD, width=min(width, 80), pad_edge=False, show_edge=False)
        metrics.add_column("metric", no_wrap=True, overflow="ellipsis", ratio=3)
        metrics.add_column("value", justify="right", no_wrap=True, ratio=1)
        for key in keys[:room]:
            metrics.add_row(self._name(key), f"{self._latest[key]:.4g}", style="bold" if key in self.headlines else "")
        if len(keys) > room:
            metrics.caption = f"+{len(keys) - room} more: mechmon summary RUN_DIR"
        parts.append(metrics)
        return Group(*parts)

    def stop(self) -> None:
        """Stop the live panel (idempotent)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
