"""Writers: rank 0 writes through TensorBoard's own ``SummaryWriter``; other ranks hold a :class:`NullWriter`.

Scalars go to every Lightning logger of the trainer (``log_metrics``: TensorBoard, CSV, ...) and, when the
trainer has no TensorBoardLogger, to mechmon's own ``SummaryWriter``. Heatmaps, alert text and the
custom-scalars layout go to the TensorBoard experiment. :func:`open_writer` puts the TensorBoard side on a
background thread (:class:`mechmon.background.BackgroundWriter`) and draws heatmaps in a child process
(:func:`mechmon.render.shared`): neither drawing nor serialising holds the training loop.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mechmon.background import BackgroundWriter
from mechmon.figures import heatmap_image, heatmap_png, heatmap_rgb
from mechmon.render import shared as shared_renderer

__all__ = [
    "NullWriter",
    "TensorBoardWriter",
    "open_writer",
    "heatmap_rgb",
    "scalar_layout",
    "LEVEL",
    "BEYOND",
    "ALERT_COUNT",
]


class NullWriter:
    """Writes nothing (non-zero ranks, or a disabled writer)."""

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """Drop scalars."""

    def image(self, tag: str, matrix: np.ndarray, step: int) -> None:
        """Drop an image."""

    def text(self, tag: str, text: str, step: int) -> None:
        """Drop text."""

    def layout(
        self, keys: Iterable[str], headlines: Sequence[str] = (), levels: Mapping[str, float] | None = None
    ) -> None:
        """Drop the layout."""

    def flush(self) -> None:
        """Nothing buffered."""

    def close(self) -> None:
        """Nothing to close."""


class TensorBoardWriter(NullWriter):
    """Rank-0 writer of the TensorBoard files (the loggers' ``log_metrics`` are :class:`BackgroundWriter`'s).

    Args:
        experiment: a ``torch.utils.tensorboard.SummaryWriter`` (the TensorBoardLogger's ``experiment`` or ours).
        own_scalars: also write scalars to ``experiment`` (when no TensorBoardLogger receives them).
        owned: close ``experiment`` in :meth:`close`.
        renderer: ``fn(matrix, title) -> RGB`` drawing the heatmaps (default: ``figures.heatmap_image``, here).
    """

    def __init__(
        self, experiment: Any | None, own_scalars: bool = True, owned: bool = False, renderer: Any | None = None
    ) -> None:
        self.experiment, self.own_scalars, self.owned, self.renderer = experiment, own_scalars, owned, renderer
        self._layout_written = False

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """Python floats at ``step`` (``trainer.global_step``)."""
        if self.own_scalars:
            for key, value in metrics.items():
                self.experiment.add_scalar(key, value, global_step=step)

    def image(self, tag: str, matrix: np.ndarray, step: int) -> None:
        """A ``[layers, heads]`` matrix as a labelled heatmap image, and its values as tensor ``<tag>/values``.

        The values (no TensorBoard dashboard shows them) are what ``mechmon report`` draws from.
        """
        if self.experiment is None:
            return
        title = tag.split("/", 2)[-1]
        if not hasattr(self.experiment, "_get_file_writer"):  # not torch's SummaryWriter: its own add_image
            self.experiment.add_image(tag, (self.renderer or heatmap_image)(matrix, title), step, dataformats="HWC")
            return
        import torch
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard.summary import tensor_proto

        # the PNG comes encoded (by the drawing process when there is one), as add_image would encode it
        data, (height, width, channels) = getattr(self.renderer, "png", heatmap_png)(matrix, title)
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=data)
        files = self.experiment._get_file_writer()  # the file writer adds raw summaries, as add_image does
        files.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        values = tensor_proto(f"{tag}/values", torch.as_tensor(np.asarray(matrix, dtype=np.float32)))
        files.add_summary(values, step)

    def text(self, tag: str, text: str, step: int) -> None:
        """A markdown text entry."""
        if self.experiment is not None:
            self.experiment.add_text(tag, text, global_step=step)

    def layout(
        self, keys: Iterable[str], headlines: Sequence[str] = (), levels: Mapping[str, float] | None = None
    ) -> None:
        """Write the custom-scalars layout once (best effort); see :func:`scalar_layout`."""
        if self._layout_written or self.experiment is None:
            return
        self.experiment.add_custom_scalars(tensorboard_order(scalar_layout(keys, headlines, levels)))
        self._layout_written = True

    def flush(self) -> None:
        """Write buffered events to disk."""
        if self.experiment is not None:
            self.experiment.flush()

    def close(self) -> None:
        """Flush, and close what we opened."""
        if self.experiment is None:
            return
        self.experiment.flush()
        if self.owned:
            self.experiment.close()


def open_writer(
    experiment: Any | None = None,
    loggers: Sequence[Any] = (),
    log_dir: str | os.PathLike | None = None,
    purge_step: int | None = None,
) -> NullWriter:
    """The writing rank's writer: TensorBoard files written on a background thread, loggers called at once.

    Args:
        experiment: a ``SummaryWriter`` a logger already owns (Lightning's TensorBoardLogger): heatmaps, text and
            the layout go there and scalars reach it through that logger's ``log_metrics``.
        loggers: objects with ``log_metrics(metrics, step)`` that receive every scalar.
        log_dir: folder of mechmon's own ``SummaryWriter`` when there is no ``experiment`` (``None``: loggers only).
        purge_step: hide the events of ``log_dir`` at this step or later (a resumed run; ``SummaryWriter``'s own).

    A folder that cannot be written gives one warning and a writer that feeds the loggers only.
    """
    if experiment is None and log_dir is None and not loggers:
        return NullWriter()
    if experiment is not None or log_dir is None:
        return BackgroundWriter(TensorBoardWriter(experiment, own_scalars=False, renderer=shared_renderer()), loggers)
    try:
        from torch.utils.tensorboard import SummaryWriter

        own = SummaryWriter(str(log_dir), purge_step=purge_step)
        return BackgroundWriter(
            TensorBoardWriter(own, own_scalars=True, owned=True, renderer=shared_renderer()), loggers
        )
    except Exception as err:  # caveat: an unwritable folder must not stop training
        warnings.warn(
            f"mechmon cannot write TensorBoard files to {log_dir}: {err}; metrics go to loggers only", stacklevel=2
        )
        return BackgroundWriter(NullWriter(), loggers) if loggers else NullWriter()


LEVEL = "alert_level"  # scope of the constant series carrying a threshold rule's level
BEYOND = "beyond_level"  # scope of the series that leaves the level only where the value passes it
ALERT_COUNT = "count"  # <ns>/alerts/count: how many alerts fired at a step


def _chart(key: str, levels: Mapping[str, float]) -> tuple[str, list]:
    """``(title suffix, chart)`` for one series, as a ``Margin`` chart so that charts keep their order.

    A key a threshold rule watches is shaded only where it passes its alert level: the band runs from the level
    (``<key>/alert_level``) to ``<key>/beyond_level`` (the value where it is past the level, the level elsewhere),
    so a healthy chart is its line alone. Any other key is its line alone (the band has no height).
    """
    if key in levels:
        return f" (alert level {levels[key]:g}: shaded past it)", ["Margin", [key, f"{key}/{LEVEL}", f"{key}/{BEYOND}"]]
    return "", ["Margin", [key, key, key]]


def scalar_layout(
    keys: Iterable[str], headlines: Sequence[str] = (), levels: Mapping[str, float] | None = None
) -> dict[str, dict[str, list]]:
    """Custom-scalars layout: an overview of each probe's headline first, one category per probe, alerts last.

    Args:
        keys: every key the run logs (known at setup or first published).
        headlines: each probe's headline key, charted in the overview category.
        levels: key -> alert level of the threshold rules (their charts are shaded to the level).

    A probe's category ``<ns>/<probe>`` has one chart per unscoped stat; its per-layer or per-group series go to
    ``<ns>/<probe> by scope``, one chart per stat. The alerts category is one chart of the markers that fired (1 at
    the step), so no chart waits for an alert. Dict order is the order a person reads the charts in.
    """
    keys, levels = set(keys), dict(levels or {})
    stats = sorted({tuple(k.split("/")[:3]) for k in keys if k.count("/") >= 2 and k.split("/")[1] != "alerts"})
    namespace = stats[0][0] if stats else "mechmon"
    layout: dict[str, dict[str, list]] = {}
    for key in (k for k in headlines if k in keys):
        suffix, chart = _chart(key, levels)
        layout.setdefault(f"{namespace} overview", {})[f"{key.split('/')[1]}: {key.split('/')[2]}{suffix}"] = chart
    for ns, probe, stat in stats:
        key = f"{ns}/{probe}/{stat}"
        if key in keys:
            suffix, chart = _chart(key, levels)
            layout.setdefault(f"{ns}/{probe}", {})[f"{probe}: {stat}{suffix}"] = chart
        if any(k.startswith(f"{key}/") and not k.endswith((LEVEL, BEYOND)) for k in keys):
            scoped = ["Multiline", [rf"^{re.escape(key)}/(?!{LEVEL}$|{BEYOND}$).+$"]]
            title = f"{probe}: {stat} by scope (hover a line for its layer)"  # one colour per run, not per tag
            layout.setdefault(f"{ns}/{probe} by scope", {})[title] = scoped
    layout[f"{namespace}/alerts"] = {
        "alerts fired at each step (count)": ["Multiline", [rf"^{namespace}/alerts/{ALERT_COUNT}$"]],
        "alerts by rule (1 at the step)": ["Multiline", [rf"^{namespace}/alerts/(?!{ALERT_COUNT}$)"]],
    }
    return layout


def tensorboard_order(layout: dict[str, dict[str, list]]) -> dict[str, dict[str, list]]:
    """The layout as :meth:`SummaryWriter.add_custom_scalars` must receive it to show charts in ``layout`` order.

    TensorBoard's Custom Scalars tab draws the margin charts of a category last-written first (seen in Chromium
    with TensorBoard 2.21), so they are written reversed; categories and line charts keep their order.
    """
    return {
        title: dict(reversed(charts.items())) if all(c[0] == "Margin" for c in charts.values()) else charts
        for title, charts in layout.items()
    }
