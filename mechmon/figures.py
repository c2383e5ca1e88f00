"""Figures through matplotlib (the ``mechmon[report]`` extra): labelled ``[layer, head]`` heatmaps and metric panels.

Only the object-oriented API with the Agg canvas is used (no pyplot state), so figures can be drawn from any thread.
Without matplotlib, :func:`heatmap_image` falls back to plain coloured cells (:func:`heatmap_rgb`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

__all__ = [
    "available",
    "heatmap_image",
    "heatmap_png",
    "heatmap_rgb",
    "draw_heatmap",
    "draw_series",
    "draw_scopes",
    "best_cell",
]


def available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def best_cell(matrix: np.ndarray) -> tuple[int, int, float] | None:
    """``(layer, head, value)`` of the largest finite cell of a ``[L, H]`` matrix, or None when none is finite."""
    m = np.asarray(matrix, dtype=np.float64)
    if not np.isfinite(m).any():
        return None
    index = int(np.nanargmax(np.where(np.isfinite(m), m, -np.inf)))
    layer, head = divmod(index, m.shape[1])
    return layer, head, float(m[layer, head])


def colour_range(matrix: np.ndarray) -> tuple[float, float]:
    """``[0, 1]`` for values inside it (scores, shares), else the finite range widened to include 0 or 1."""
    finite = np.asarray(matrix, dtype=np.float64)[np.isfinite(matrix)]
    if finite.size == 0:
        return 0.0, 1.0
    return min(0.0, float(finite.min())), max(1.0, float(finite.max()))


def draw_heatmap(ax, matrix: np.ndarray, title: str) -> None:
    """Draw a ``[L, H]`` matrix on ``ax``: layers down, heads across, numbered, a colour bar, the best cell named."""
    m = np.asarray(matrix, dtype=np.float64)
    vmin, vmax = colour_range(m)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.6")  # NaN cells grey
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    layers, heads = m.shape
    ax.set_xticks(range(heads), [str(h) for h in range(heads)] if heads <= 32 else None)
    ax.set_yticks(range(layers), [str(layer) for layer in range(layers)] if layers <= 48 else None)
    if heads > 32:
        ax.set_xticks(range(0, heads, max(1, heads // 8)))
    if layers > 48:
        ax.set_yticks(range(0, layers, max(1, layers // 8)))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    best = best_cell(m)
    ax.set_title(title + (f"\nmax {best[2]:.3g} at L{best[0]} H{best[1]}" if best else "\nno finite value"), fontsize=9)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)


def heatmap_image(matrix: np.ndarray, title: str) -> np.ndarray:
    """A labelled heatmap of ``[L, H]`` values as an RGB image ``[height, width, 3]`` uint8 (for TensorBoard).

    Without matplotlib: the plain coloured cells of :func:`heatmap_rgb` on the same colour range.
    """
    if not available():
        return heatmap_rgb(matrix, *colour_range(matrix))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layers, heads = np.asarray(matrix).shape
    figure = Figure(figsize=(min(3.2 + 0.4 * heads, 12), min(2.4 + 0.3 * layers, 12)), dpi=100)  # room for labels
    canvas = FigureCanvasAgg(figure)
    draw_heatmap(figure.add_subplot(), matrix, title)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def draw_series(
    ax,
    series: Sequence[tuple[int, float]],
    title: str,
    level: float | None = None,
    alerts: Sequence[tuple[int, str]] = (),
) -> None:
    """One statistic over steps: its line, the alert level dashed, each alert a red vertical line with its rule."""
    steps = [s for s, _ in series]
    values = [v for _, v in series]
    ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, color="C0", label=title)
    if level is not None:
        ax.axhline(level, color="C3", linestyle="--", linewidth=1, label=f"alert level {level:g}")
    for step, rule in alerts:
        ax.axvline(step, color="C3", linewidth=1, alpha=0.7)
        ax.annotate(
            rule,
            (step, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            color="C3",
            rotation=90,
            ha="right",
            va="top",
        )
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        ax.text(0.5, 0.5, "not measured (NaN)", transform=ax.transAxes, ha="center", color="0.4")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if level is not None:
        ax.legend(fontsize=7, loc="best")


def draw_scopes(ax, scopes: dict[str, Sequence[tuple[int, float]]], title: str) -> None:
    """One statistic over steps per scope (layer, expert): a colour and a legend entry each, every value in range.

    ``scopes`` maps a scope name (``L0``, ``layer3``) to its ``(step, value)`` series; NaN values leave gaps.
    """
    for i, (scope, series) in enumerate(sorted(scopes.items(), key=lambda kv: _natural(kv[0]))):
        ax.plot([s for s, _ in series], [v for _, v in series], color=f"C{i % 10}", linewidth=1.2, label=scope)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="best", ncol=2 if len(scopes) > 6 else 1)


def _natural(name: str) -> tuple:
    """``L2`` before ``L10``: digit runs compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


_STOPS = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


def heatmap_png(matrix: np.ndarray, title: str) -> tuple[bytes, tuple[int, int, int]]:
    """:func:`heatmap_image` encoded as TensorBoard's image summary encodes it (PIL, PNG): ``(png bytes, (h, w, 3))``.

    Without Pillow (it comes with matplotlib): ``ImportError``.
    """
    import io

    from PIL import Image

    rgb = np.ascontiguousarray(heatmap_image(matrix, title), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, format="PNG")
    return out.getvalue(), tuple(rgb.shape)


def heatmap_rgb(matrix: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, cell: int = 24) -> np.ndarray:
    """Render ``[rows, cols]`` values as a viridis-like uint8 image ``[rows*cell, cols*cell, 3]``.

    Values are clipped to ``[vmin, vmax]``; NaN cells are grey. Rows are layers, columns heads.
    """
    m = np.asarray(matrix, dtype=np.float64)
    t = np.clip((m - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0)
    pos = np.nan_to_num(t, nan=0.0) * (len(_STOPS) - 1)
    lo = np.minimum(pos.astype(int), len(_STOPS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _STOPS[lo] * (1 - frac) + _STOPS[lo + 1] * frac
    rgb[np.isnan(m)] = 128
    return np.kron(rgb, np.ones((cell, cell, 1))).astype(np.uint8)
