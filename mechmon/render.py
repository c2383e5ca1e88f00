"""Heatmaps drawn in a child process, so that matplotlib never holds the training process's GIL.

A thread would still take the interpreter lock from the training loop for the whole drawing (about 50 ms a figure
on a 2-core CPU): under DDP every other rank would wait for rank 0 at the next all-reduce. The child is started by
path with the same interpreter (``mechmon/render_worker.py``, which imports numpy and matplotlib, not torch), so
nothing of the user's script runs in it, unlike a multiprocessing ``spawn``.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import numpy as np

from mechmon import figures

__all__ = ["Renderer", "shared"]

_WORKER = Path(__file__).with_name("render_worker.py")


class Renderer:
    """``renderer(matrix, title)`` = :func:`mechmon.figures.heatmap_image`, drawn in a child process.

    The child starts at the first call; calls from several threads take turns. If it cannot start or dies, one
    warning, and every later figure is drawn in the calling thread. Without matplotlib the plain cells are drawn in
    the calling thread (cheap).
    """

    def __init__(self) -> None:
        self._child: subprocess.Popen | None = None
        self._broken = not figures.available()
        self._lock = threading.Lock()

    def __call__(self, matrix: np.ndarray, title: str) -> np.ndarray:
        """An RGB image ``[height, width, 3]`` uint8 of the ``[L, H]`` matrix (see ``heatmap_image``)."""
        answer = self._answer(matrix, title, png=False)
        if answer is None:
            return figures.heatmap_image(matrix, title)
        data, shape = answer
        return np.frombuffer(data, dtype=np.uint8).reshape(shape).copy()

    def png(self, matrix: np.ndarray, title: str) -> tuple[bytes, tuple[int, int, int]]:
        """The same image PNG-encoded as TensorBoard encodes it (see ``heatmap_png``), encoded in the child too."""
        answer = self._answer(matrix, title, png=True)
        return figures.heatmap_png(matrix, title) if answer is None else answer

    def _answer(self, matrix: np.ndarray, title: str, png: bool) -> tuple[bytes, tuple[int, ...]] | None:
        """The child's answer, or ``None`` when it cannot give one (then the caller draws in its own thread)."""
        with self._lock:
            if self._broken:
                return None
            try:
                return self._ask(np.ascontiguousarray(matrix, dtype=np.float64), title, png)
            except Exception as err:  # caveat: a lost child must not lose the images
                self._broken = True
                self._end()
                warnings.warn(
                    f"mechmon: the heatmap process failed ({type(err).__name__}: {err}); heatmaps are drawn "
                    "in the writer thread from now on",
                    stacklevel=3,
                )
                return None

    def _ask(self, matrix: np.ndarray, title: str, png: bool) -> tuple[bytes, tuple[int, ...]]:
        if self._child is None:
            self._child = subprocess.Popen(
                [sys.executable, str(_WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        child = self._child
        child.stdin.write((json.dumps({"shape": list(matrix.shape), "title": title, "png": png}) + "\n").encode())
        child.stdin.write(matrix.tobytes())
        child.stdin.flush()
        head = child.stdout.readline()
        if not head:
            raise EOFError(f"the process ended (exit code {child.poll()})")
        answer = json.loads(head)
        data = child.stdout.read(int(answer["bytes"]))
        return data, tuple(answer["shape"])

    def close(self) -> None:
        """End the child (it exits when its input closes; killed after 10 s); later calls draw in their thread.

        At interpreter exit this runs before the writers drain their queues: no child is started again then.
        """
        with self._lock:
            self._broken = True
            self._end()

    def _end(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        try:
            child.stdin.close()
            child.wait(timeout=10)
        except Exception:  # caveat: closing must never raise into the run's end (a dead child's broken pipe)
            child.kill()
            child.wait()
        finally:
            child.stdout.close()


_SHARED: Renderer | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> Renderer:
    """The process's one renderer (one child for every writer of the process), ended at interpreter exit."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Renderer()
            atexit.register(_SHARED.close)
        return _SHARED
