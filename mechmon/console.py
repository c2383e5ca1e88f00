"""Console output through rich: alert lines and an optional live table of the latest probe values."""

from __future__ import annotations

from collections.abc import Mapping

from rich.console import Console
from rich.live import Live
from rich.table import Table

from mechmon.alerts import Alert

__all__ = ["ConsoleView"]

_STYLE = {"info": "cyan", "warning": "yellow", "critical": "bold red"}


class ConsoleView:
    """Prints alerts; with ``live=True`` also keeps a live table of the scalar metrics without a scope.

    Args:
        live: show the live table (turn Lightning's progress bar off to avoid two live displays).
        console: a rich ``Console``; a new one on stderr by default.
    """

    def __init__(self, live: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.live_enabled = live
        self._live: Live | None = None
        self._latest: dict[str, float] = {}
        self._alerts: list[Alert] = []
        self._step = 0

    def update(self, step: int, scalars: Mapping[str, float]) -> None:
        """Record the latest values (unscoped keys only) and refresh the table."""
        self._step = step
        self._latest.update({k: v for k, v in scalars.items() if k.count("/") == 2})
        if self.live_enabled:
            if self._live is None:
                self._live = Live(self._table(), console=self.console, refresh_per_second=2, transient=False)
                self._live.start()
            self._live.update(self._table())

    def alert(self, alert: Alert) -> None:
        """Print one alert line."""
        self._alerts.append(alert)
        style = _STYLE.get(alert.severity, "")
        self.console.print(f"[{style}]mechmon {alert.severity} at step {alert.step}: {alert.rule}[/] - {alert.reason}")

    def _table(self) -> Table:
        table = Table(title=f"mechmon - step {self._step}", show_lines=False)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key in sorted(self._latest):
            table.add_row(key, f"{self._latest[key]:.4g}")
        for alert in self._alerts[-5:]:
            table.add_row(f"[{_STYLE.get(alert.severity, '')}]alert {alert.rule}[/]", f"step {alert.step}")
        return table

    def stop(self) -> None:
        """Stop the live display (idempotent)."""
        if self._live is not None:
            self._live.stop()
            self._live = None
