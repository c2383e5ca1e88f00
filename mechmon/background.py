"""The writing rank's writer on its own thread: drawing heatmaps and serialising events never run in the training loop.

:class:`BackgroundWriter` wraps a writer; its calls are queued (bounded) and a daemon thread makes them, in order.
A full queue drops the call, with one warning, rather than block the training loop or grow without bound. The scalar
loggers an integration hands over (Lightning's ``log_metrics``) are still called on the caller's thread: Lightning
calls them from the training loop too, and not every logger is thread-safe.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["BackgroundWriter", "QUEUE_SIZE", "JOIN_SECONDS", "warn_stopped"]

QUEUE_SIZE = 256  # calls waiting (a scheduled step queues 1 scalars call, a few texts and images)
JOIN_SECONDS = 60.0  # the longest flush() and close() wait for the thread (a stalled file system)
_STOP = object()


class BackgroundWriter:
    """Make ``inner``'s calls on a daemon thread, in order; ``loggers`` get the scalars on the caller's thread.

    Args:
        inner: the writer whose calls are deferred (TensorBoard files).
        loggers: objects with ``log_metrics(metrics, step)`` called at once with every scalar.
        size: the queue's bound; a call arriving at a full queue is dropped, with one warning.

    The first call of ``inner`` that raises stops it (later calls are dropped) with one warning, and so does the
    first logger that raises for the loggers: a full disk never reaches the training loop. :meth:`flush` and
    :meth:`close` wait for the queued calls, at most ``JOIN_SECONDS``.
    """

    def __init__(self, inner: Any, loggers: Sequence[Any] = (), size: int = QUEUE_SIZE) -> None:
        self.inner: Any | None = inner  # None once a call of it raised
        self.loggers = list(loggers)
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        self._closed = False

    # -- the writer's calls ----------------------------------------------------------------------------------
    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        """Loggers now; the inner writer's scalars on the thread."""
        try:
            for logger in self.loggers:
                logger.log_metrics(dict(metrics), step=step)
        except Exception as err:  # caveat: a logger that raises must never stop training
            warn_stopped(f"{type(logger).__name__}.log_metrics", err)
            self.loggers = []
        self._put("scalars", dict(metrics), step)

    def image(self, tag: str, matrix: np.ndarray, step: int) -> None:
        """Drawn and written on the thread (the matrix is copied: the caller may reuse its buffer)."""
        self._put("image", tag, np.array(matrix, copy=True), step)

    def text(self, tag: str, text: str, step: int) -> None:
        """Written on the thread."""
        self._put("text", tag, text, step)

    def layout(
        self, keys: Iterable[str], headlines: Sequence[str] = (), levels: Mapping[str, float] | None = None
    ) -> None:
        """Written on the thread."""
        self._put("layout", list(keys), list(headlines), dict(levels or {}))

    def flush(self) -> None:
        """Wait until every queued call is made, then flush the inner writer's files."""
        done = threading.Event()
        if self._put("flush", block=True, done=done):
            done.wait(JOIN_SECONDS)

    def close(self) -> None:
        """Make the queued calls, close the inner writer and stop the thread (waits at most ``JOIN_SECONDS``)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        thread = self._thread
        if thread is None:  # nothing was ever queued
            self._call("close", ())
            return
        try:
            self._queue.put((_STOP, (), None), timeout=JOIN_SECONDS)
        except queue.Full:
            return
        thread.join(JOIN_SECONDS)

    # -- the thread ------------------------------------------------------------------------------------------
    def _put(self, method: str, *args: Any, block: bool = False, done: threading.Event | None = None) -> bool:
        """Queue one call; ``False`` when it was dropped (closed, or the queue is full and ``block`` is off)."""
        if self._closed:
            return False
        self._start()
        try:
            self._queue.put((method, args, done), block=block, timeout=JOIN_SECONDS if block else None)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                warnings.warn(
                    f"mechmon: the event writer fell {self._queue.maxsize} calls behind (a slow disk?); a {method} "
                    "call was dropped and later ones are dropped while it stays behind; values stay in "
                    "monitor.latest and monitor.alerts",
                    stacklevel=4,
                )
            return False
        return True

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mechmon-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            method, args, done = self._queue.get()
            if method is _STOP:
                self._call("close", ())
                return
            self._call(method, args)
            if done is not None:
                done.set()

    def _call(self, method: str, args: tuple) -> None:
        """One inner call; the first that raises stops the inner writer, with a warning."""
        if self.inner is None:
            return
        try:
            getattr(self.inner, method)(*args)
        except Exception as err:  # caveat: I/O under the run's own folder must never stop training
            warn_stopped(f"{type(self.inner).__name__}.{method}", err)
            self.inner = None


def warn_stopped(call: str, err: Exception, stacklevel: int = 3) -> None:
    """The one warning for a writer or logger call that raised (``call``: ``"<type>.<method>"``): writing stops."""
    warnings.warn(
        f"mechmon stopped writing metrics after {call} raised {type(err).__name__}: {err}; the run goes on, "
        "values stay in monitor.latest and monitor.alerts",
        stacklevel=stacklevel,
    )
