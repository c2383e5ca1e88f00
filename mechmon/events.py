"""Reading a run back: mechmon's scalars and alert texts from the TensorBoard event files under a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["Series", "read_run", "read_heatmaps"]


Series = dict[str, list[tuple[int, float]]]


def read_run(run_dir: Path, namespace: str = "mechmon") -> tuple[Series, list[tuple[int, str]]]:
    """Read mechmon scalars and alert texts back from the event files under ``run_dir``.

    Returns:
        ``(scalars, alerts)``: key -> [(step, value)], and [(step, text)] sorted by step.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {run_dir}")
    scalars: Series = {}
    alerts: list[tuple[int, str]] = []
    for folder in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(f"{namespace}/"):
                scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(f"{namespace}/alerts"):
                alerts += [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
    return scalars, sorted(alerts)


def read_heatmaps(run_dir: Path, namespace: str = "mechmon") -> dict[str, list[tuple[int, np.ndarray]]]:
    """The ``[L, H]`` matrices written beside the heatmap images (tag ``<key>/values``), key -> [(step, matrix)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    out: dict[str, list[tuple[int, np.ndarray]]] = {}
    for folder in sorted({f.parent for f in Path(run_dir).rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(f"{namespace}/") and tag.endswith("/values"):
                values = [(e.step, tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]
                out.setdefault(tag.removesuffix("/values"), []).extend(values)
    return {k: sorted(v, key=lambda sv: sv[0]) for k, v in out.items()}
