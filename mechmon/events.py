"""Reading a run back: mechmon's scalars and alert texts from the TensorBoard event files under a folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["RunEvents", "Series", "load_run", "read_run"]


Series = dict[str, list[tuple[int, float]]]


@dataclass
class RunEvents:
    """A run read back.

    ``scalars``: key -> [(step, value)]; ``alerts``: [(step, text)] by step; ``heatmaps``: key -> [(step, [L, H])].
    """

    scalars: Series
    alerts: list[tuple[int, str]]
    heatmaps: dict[str, list[tuple[int, np.ndarray]]]


def load_run(run_dir: Path, namespace: str = "mechmon") -> RunEvents:
    """Read mechmon's scalars, alert texts and heatmap values (tags ``<key>/values``) in one pass over the events.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {run_dir}")
    run = RunEvents({}, [], {})
    for folder in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(f"{namespace}/"):
                run.scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(f"{namespace}/alerts"):
                run.alerts += [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
            elif tag.startswith(f"{namespace}/") and tag.endswith("/values"):
                values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
                run.heatmaps.setdefault(tag.removesuffix("/values"), []).extend(values)
    run.alerts.sort()
    run.heatmaps = {k: sorted(v, key=lambda sv: sv[0]) for k, v in run.heatmaps.items()}
    return run


def read_run(run_dir: Path, namespace: str = "mechmon") -> tuple[Series, list[tuple[int, str]]]:
    """Read mechmon scalars and alert texts back from the event files under ``run_dir`` (see :func:`load_run`).

    Returns:
        ``(scalars, alerts)``: key -> [(step, value)], and [(step, text)] sorted by step.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file.
    """
    run = load_run(run_dir, namespace)
    return run.scalars, run.alerts
