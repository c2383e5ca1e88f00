"""``mechmon report``: one picture of a run, read back from its TensorBoard event files.

One figure per probe family: each unscoped statistic over steps (the family's headline first) with its alert level
dashed and each alert a red line at the step it fired, then each statistic written per scope (layer, expert) as one
line per scope with a legend, then the family's ``[layer, head]`` heatmaps at the first, middle and last evaluation
that wrote one. Needs matplotlib (``pip install "mechmon[report]"``).
"""

from __future__ import annotations

import base64
import html
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mechmon.events import RunEvents, Series, load_run
from mechmon.figures import draw_heatmap, draw_scopes, draw_series
from mechmon.registry import headline
from mechmon.writers import BEYOND, LEVEL

__all__ = ["write_report", "family_figures"]

_RULE = re.compile(r"`([^`]+)`")
_STATS_PER_ROW, _MAX_STATS = 4, 8


def _stats(scalars: Series, probe: str, namespace: str) -> list[str]:
    """Unscoped keys of one family, the probe's headline first, then those with an alert level, then the rest."""
    prefix = f"{namespace}/{probe}/"
    keys = sorted(k for k in scalars if k.startswith(prefix) and k.count("/") == 2)
    head = headline(probe)

    def order(key: str) -> tuple[int, str]:
        return (0 if key.endswith(f"/{head}") else 1 if f"{key}/{LEVEL}" in scalars else 2, key)

    return sorted(keys, key=order)[:_MAX_STATS]


def _scoped(scalars: Series, probe: str, namespace: str) -> dict[str, dict[str, Series]]:
    """Statistics of one family written per scope: ``{stat: {scope: series}}`` (alert level and shading left out)."""
    out: dict[str, dict[str, Series]] = {}
    for key in sorted(scalars):
        parts = key.split("/")
        if len(parts) == 4 and parts[:2] == [namespace, probe] and parts[3] not in (LEVEL, BEYOND):
            out.setdefault(parts[2], {})[parts[3]] = scalars[key]
    return dict(list(out.items())[:_MAX_STATS])


def _family_alerts(alerts: Sequence[tuple[int, str]], probe: str, namespace: str) -> list[tuple[int, str]]:
    """Alerts whose text names a key of this family: ``(step, rule)``."""
    out = []
    for step, text in alerts:
        rule = _RULE.search(text)
        if f"{namespace}/{probe}/" in text:
            out.append((step, rule.group(1) if rule else "alert"))
    return out


def _thirds(items: list) -> list:
    picked = [items[0], items[len(items) // 2], items[-1]] if items else []
    return [x for i, x in enumerate(picked) if x is not picked[i - 1] or i == 0]


def family_figures(run_dir: str | Path, namespace: str = "mechmon") -> dict[str, object]:
    """One matplotlib ``Figure`` per probe family of the run: ``{probe: figure}``, those with alerts first.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file.
        ImportError: without matplotlib (the message names the extra).
    """
    return _figures(load_run(Path(run_dir), namespace), namespace)


def _figures(run: RunEvents, namespace: str) -> dict[str, object]:
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError('mechmon report needs matplotlib: pip install "mechmon[report]"') from err
    scalars, alerts, heatmaps = run.scalars, run.alerts, run.heatmaps
    families = sorted({k.split("/")[1] for k in scalars if k.split("/")[1] != "alerts"})
    families.sort(key=lambda probe: not _family_alerts(alerts, probe, namespace))  # families that alerted first
    figures: dict[str, object] = {}
    for probe in families:
        stats = _stats(scalars, probe, namespace)
        scoped = _scoped(scalars, probe, namespace)
        maps = [(k, sm) for k, v in sorted(heatmaps.items()) if k.split("/")[1] == probe for sm in _thirds(v)]
        panels = [("stat", key) for key in stats] + [("scoped", stat) for stat in scoped]
        rows = -(-len(panels) // _STATS_PER_ROW) + -(-len(maps) // 3)
        figure = Figure(figsize=(16, 3.2 * max(rows, 1)), dpi=90)
        figure.suptitle(f"{namespace}/{probe}", fontsize=13, fontweight="bold", x=0.01, ha="left")
        grid = figure.add_gridspec(max(rows, 1), 12)
        family_alerts = _family_alerts(alerts, probe, namespace)
        for i, (kind, key) in enumerate(panels):
            row, col = divmod(i, _STATS_PER_ROW)
            ax = figure.add_subplot(grid[row, col * 3 : col * 3 + 3])
            if kind == "scoped":
                draw_scopes(ax, scoped[key], f"{key} by scope")
                continue
            level = scalars.get(f"{key}/{LEVEL}")
            draw_series(ax, scalars[key], key.split("/", 2)[2], level[-1][1] if level else None, family_alerts)
        first_map_row = -(-len(panels) // _STATS_PER_ROW)
        for i, (key, (step, matrix)) in enumerate(maps):
            row, col = divmod(i, 3)
            ax = figure.add_subplot(grid[first_map_row + row, col * 4 : col * 4 + 4])
            draw_heatmap(ax, matrix, f"{key.split('/', 2)[2]} at step {step}")
        figure.tight_layout(rect=(0, 0, 1, 0.97))
        figures[probe] = figure
    return figures


def _png(figure: object) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_report(run_dir: str | Path, out: str | Path, *, as_html: bool = False, namespace: str = "mechmon") -> Path:
    """Write the run's report: one PNG (the families stacked) or, with ``as_html``, an HTML page with alerts.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file; ImportError: without matplotlib.
    """
    import matplotlib.image

    run = load_run(Path(run_dir), namespace)
    out = Path(out)
    pngs = {probe: _png(fig) for probe, fig in _figures(run, namespace).items()}
    if as_html:
        rows = "".join(f"<tr><td>{s}</td><td>{html.escape(t)}</td></tr>" for s, t in run.alerts)
        rows = rows or "<tr><td>none</td></tr>"
        body = "".join(
            f'<h2 id="{html.escape(p)}">{html.escape(f"{namespace}/{p}")}</h2>'
            f'<img src="data:image/png;base64,{base64.b64encode(b).decode()}">'
            for p, b in pngs.items()
        )
        page = (
            f"<!doctype html><meta charset='utf-8'><title>mechmon report: {html.escape(str(run_dir))}</title>"
            "<style>body{font-family:sans-serif;margin:2em}img{max-width:100%}td{padding:2px 8px}</style>"
            f"<h1>mechmon report</h1><p>{html.escape(str(run_dir))}</p><h2>Alerts</h2><table>{rows}</table>{body}"
        )
        out.write_text(page)
        return out
    images = [matplotlib.image.imread(io.BytesIO(b), format="png")[..., :3] for b in pngs.values()]
    width = max(im.shape[1] for im in images)
    padded = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=1.0) for im in images]
    matplotlib.image.imsave(out, np.concatenate(padded, axis=0))
    return out
