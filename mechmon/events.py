"""Reading a run back: mechmon's scalars, alert texts and heatmap values from the TensorBoard event files of a run.

The files are read one record at a time (TensorBoard's own ``Event`` protos and record checksums), so memory stays
bounded whatever the run's length: each series keeps between :data:`MAX_POINTS` and twice that many points once it
is long, thinned evenly (every other point dropped when it passes twice that), its first and last always kept.
Alerts are all kept (the last text of each step: it lists every alert of that step).

What a reader of a run folder must not do silently:

- **several runs**: event files with mechmon data in more than one folder (``version_0`` and ``version_1`` under a
  parent), or a folder reused by a second run (a file that starts again at or before the steps an earlier file
  reached, with no restart marker) -> :class:`RunError`, naming them. A resumed run that marks its restart
  (``SummaryWriter(purge_step=...)``, as mechmon's scans and HF resumes do) hides the earlier file's steps from there
  on, as TensorBoard does.
- **no mechmon data** (a run that has not evaluated yet) -> :class:`RunError`.
- **damaged records**: a record whose checksum fails is skipped, the reader finds the next whole record, and
  :attr:`RunEvents.damaged` counts the skipped stretches, and one warning says so.
"""

from __future__ import annotations

import mmap
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunEvents", "RunError", "Series", "load_run", "read_run", "MAX_POINTS"]

MAX_POINTS = 2000  # per series, for drawing and tables (a long series keeps 2,000 to 4,000 points)
_HEADER = struct.Struct("<QI")  # record length, masked crc32c of the length

Series = dict[str, list[tuple[int, float]]]


class RunError(FileNotFoundError):
    """The folder is not one mechmon run: no event file, no mechmon data, or several runs (the message names them)."""


@dataclass
class RunEvents:
    """A run read back.

    ``scalars``: key -> [(step, value)]; ``alerts``: [(step, text)] by step; ``heatmaps``: key -> [(step, [L, H])];
    ``damaged``: stretches of damaged records skipped (0 for a sound run).
    """

    scalars: Series
    alerts: list[tuple[int, str]]
    heatmaps: dict[str, list[tuple[int, np.ndarray]]]
    damaged: int = 0


@dataclass
class _Thinned:
    """At most ``2 * cap`` items, evenly spaced (every ``stride``-th of those added); the last is always kept."""

    cap: int
    items: list = field(default_factory=list)
    last: Any = None
    seen: int = 0
    stride: int = 1

    def add(self, item: Any) -> None:
        if self.seen % self.stride == 0:
            self.items.append(item)
            if len(self.items) > 2 * self.cap:
                self.items, self.stride = self.items[::2], self.stride * 2
        self.seen += 1
        self.last = item

    def purge(self, step: int) -> None:
        self.items = [x for x in self.items if x[0] < step]
        self.last = self.items[-1] if self.items else None
        self.seen = len(self.items) * self.stride

    def result(self) -> list:
        return self.items if not self.items or self.items[-1] is self.last else [*self.items, self.last]


def _records(path: Path, damaged: list[int]) -> Iterator[bytes]:
    """The records of one TFRecord file; a stretch that fails its checksums is skipped up to the next whole record."""
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
    offset, bad = 0, False
    while offset + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, offset)
        start, end = offset + _HEADER.size, offset + _HEADER.size + length
        ok = masked_crc32c(data[offset : offset + 8]) == crc and end + 4 <= len(data)
        if ok and masked_crc32c(data[start:end]) == struct.unpack_from("<I", data, end)[0]:
            yield data[start:end]
            offset, bad = end + 4, False
            continue
        if not bad:
            damaged[0] += 1
        offset, bad = offset + 1, True  # caveat: resynchronise byte by byte on the next valid header
    if offset < len(data) and not bad:
        damaged[0] += 1  # a cut last record


class _Reader:
    """One folder's events, file by file, honouring restart markers and telling a reused folder."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.scalars: dict[str, _Thinned] = {}
        self.heatmaps: dict[str, _Thinned] = {}
        self.alerts: dict[int, str] = {}  # step -> the text of that step (the last written: it lists them all)
        self.damaged = [0]
        self.reached = -1  # highest mechmon step of the files read so far

    def read(self, path: Path) -> None:
        from tensorboard.compat.proto import event_pb2

        checked = False  # this file's first mechmon step compared with what earlier files reached
        for record in _records(path, self.damaged):
            try:
                event = event_pb2.Event.FromString(record)
            except Exception:  # caveat: a record whose checksum holds but whose proto does not
                self.damaged[0] += 1
                continue
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                self._purge(event.step)  # a resumed run restarts here: earlier files' later steps are stale
                checked = True
            elif event.HasField("summary") and self._take(event):
                if not checked and event.step <= self.reached:
                    raise RunError(f"{path.parent} holds more than one run: {path.name} starts again at step "
                                   f"{event.step}, after an earlier file reached step {self.reached}; give each run "
                                   "its own folder")  # fmt: skip
                checked = True
                self.reached = max(self.reached, event.step)

    def _take(self, event: Any) -> bool:
        from tensorboard.util import tensor_util

        took = False
        for value in event.summary.value:
            tag = value.tag
            if not tag.startswith(f"{self.ns}/"):
                continue
            took = True
            if value.HasField("simple_value"):
                self.scalars.setdefault(tag, _Thinned(MAX_POINTS)).add((event.step, float(value.simple_value)))
            elif value.HasField("tensor") and tag.startswith(f"{self.ns}/alerts"):
                for text in value.tensor.string_val[:1]:
                    self.alerts[event.step] = text.decode()
            elif value.HasField("tensor") and tag.endswith("/values"):
                matrix = tensor_util.make_ndarray(value.tensor)
                self.heatmaps.setdefault(tag.removesuffix("/values"), _Thinned(64)).add((event.step, matrix))
            elif value.HasField("tensor") and value.tensor.dtype in (1, 2):  # float32 / float64 scalars (new style)
                scalar = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
                self.scalars.setdefault(tag, _Thinned(MAX_POINTS)).add((event.step, scalar))
        return took

    def _purge(self, step: int) -> None:
        for series in [*self.scalars.values(), *self.heatmaps.values()]:
            series.purge(step)
        self.alerts = {s: t for s, t in self.alerts.items() if s < step}
        self.reached = min(self.reached, step - 1)


def _written_order(path: Path) -> tuple:
    """``events.out.tfevents.<time>.<host>.<pid>.<n>`` in the order written (``.10`` after ``.9``)."""
    parts = path.name.split(".")
    return tuple(int(p) if p.isdigit() else 0 for p in (parts[3:4] + parts[-1:])) + (path.name,)


def load_run(run_dir: Path, namespace: str = "mechmon") -> RunEvents:
    """Read mechmon's scalars, alert texts and heatmap values (tags ``<key>/values``) of one run.

    Raises:
        RunError: if ``run_dir`` holds no event file, no mechmon data, or several runs (named in the message).
    """
    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise RunError(f"no TensorBoard event file under {run_dir}")
    readers = {}
    for folder in sorted({f.parent for f in files}):
        reader = _Reader(namespace)
        for path in sorted((f for f in files if f.parent == folder), key=_written_order):
            reader.read(path)
        if reader.scalars or reader.alerts:
            readers[folder] = reader
    if not readers:
        raise RunError(f"{run_dir} holds no {namespace} data yet (no evaluation has been written)")
    if len(readers) > 1:
        names = [str(f.relative_to(run_dir)) if f != Path(run_dir) else "." for f in readers]
        raise RunError(f"{run_dir} holds {len(readers)} runs ({', '.join(names)}); pass one of them")
    reader = next(iter(readers.values()))
    if reader.damaged[0]:
        warnings.warn(f"mechmon: skipped {reader.damaged[0]} damaged stretch(es) of records in the event files under "
                      f"{run_dir}; the records around them were read", stacklevel=2)  # fmt: skip
    scalars = {k: v.result() for k, v in reader.scalars.items()}
    heatmaps = {k: v.result() for k, v in reader.heatmaps.items()}
    alerts = [(step, entry) for step, text in sorted(reader.alerts.items()) for entry in text.split("\n\n")]
    return RunEvents(scalars, alerts, heatmaps, reader.damaged[0])


def read_run(run_dir: Path, namespace: str = "mechmon") -> tuple[Series, list[tuple[int, str]]]:
    """Read mechmon scalars and alert texts back from the event files under ``run_dir`` (see :func:`load_run`).

    Returns:
        ``(scalars, alerts)``: key -> [(step, value)], and [(step, text)] sorted by step.

    Raises:
        RunError: as :func:`load_run`.
    """
    run = load_run(run_dir, namespace)
    return run.scalars, run.alerts
