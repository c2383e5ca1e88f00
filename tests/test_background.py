"""The writing rank's writer thread: the training loop never waits for drawing or files, never sees their errors."""

import os
import threading

import numpy as np
import pytest
import torch

from mechmon import InductionProbe, LogitsProbe, Monitor
from mechmon.background import BackgroundWriter
from tests.helpers import plain_run, read_events, scalar_steps, tiny_gpt2


class Gated:
    """An inner writer whose calls wait for ``gate``: records (method, args, thread name) in order."""

    def __init__(self):
        self.gate, self.calls = threading.Event(), []

    def __getattr__(self, method):
        def call(*args):
            self.gate.wait(10)
            self.calls.append((method, args[0] if args else None, threading.current_thread().name))

        return call


def test_calls_return_at_once_while_the_writer_is_stalled_and_are_made_in_order_on_close():
    inner = Gated()
    writer = BackgroundWriter(inner, size=4)
    for step in range(3):
        writer.text("t", f"entry {step}", step)  # returns although the writer thread is blocked
    assert inner.calls == []
    inner.gate.set()
    writer.close()
    assert inner.calls == [("text", "t", "mechmon-writer")] * 3 + [("close", None, "mechmon-writer")]


def test_a_full_queue_drops_with_one_warning_instead_of_blocking():
    inner = Gated()
    writer = BackgroundWriter(inner, size=2)
    with pytest.warns(UserWarning, match="the event writer fell 2 calls behind") as seen:
        for step in range(8):
            writer.image("h", np.zeros((2, 2)), step)
    assert len([w for w in seen if "fell" in str(w.message)]) == 1 and writer.dropped >= 5
    inner.gate.set()
    writer.close()
    assert 1 <= len([c for c in inner.calls if c[0] == "image"]) <= 3  # the one taken plus the two queued


def test_a_writer_that_raises_on_its_thread_stops_writing_and_the_caller_never_sees_it():
    class Broken:
        def text(self, *args):
            raise OSError("No space left on device")

        def close(self):
            raise AssertionError("never called once the writer stopped")

    writer = BackgroundWriter(Broken())
    with pytest.warns(UserWarning, match=r"stopped writing metrics after Broken.text raised OSError"):
        writer.text("t", "x", 1)
        writer.text("t", "y", 2)
        writer.flush()
    writer.close()


def test_a_logger_that_raises_is_dropped_and_the_files_go_on():
    class Logger:
        def log_metrics(self, metrics, step):
            raise RuntimeError("logger down")

    inner = Gated()
    inner.gate.set()
    writer = BackgroundWriter(inner, loggers=[Logger()])
    with pytest.warns(UserWarning, match="after Logger.log_metrics raised RuntimeError"):
        writer.scalars({"a": 1.0}, 1)
    writer.scalars({"a": 2.0}, 2)
    writer.close()
    assert [c[1] for c in inner.calls if c[0] == "scalars"] == [{"a": 1.0}, {"a": 2.0}]


def test_in_a_real_run_heatmaps_are_asked_for_on_the_writer_thread_and_read_back(tmp_path, monkeypatch):
    import io

    from PIL import Image
    from tensorboard.util import tensor_util

    from mechmon.figures import heatmap_image
    from mechmon.render import Renderer

    asked_on, asked = [], []
    real = Renderer.png

    def spy(self, matrix, title):
        asked_on.append(threading.current_thread().name)
        asked.append((title, matrix))
        return real(self, matrix, title)

    monkeypatch.setattr(Renderer, "png", spy)
    model = tiny_gpt2()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe()]
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=1, image_schedule=2, log_dir=tmp_path)
    plain_run(monitor, model, optimizer, 4)
    assert asked_on and set(asked_on) == {"mechmon-writer"}  # drawn and PNG-encoded off the training thread
    events = read_events(tmp_path)
    assert scalar_steps(events, "mechmon/induction/score_max") == [1, 2, 3, 4]
    tag = "mechmon/induction/head_scores"
    assert [e.step for e in events.Images(tag)] == [1, 2, 4]  # the first, then every 2nd
    # the PNG TensorBoard shows decodes, pixel for pixel, to the heatmap of a matrix the writer asked for: the one
    # whose values are written beside it
    [*_, last] = events.Images(tag)
    shown = np.asarray(Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB"))
    values = tensor_util.make_ndarray(events.Tensors(f"{tag}/values")[-1].tensor_proto)
    [(title, matrix)] = [(t, m) for t, m in asked if np.allclose(m, values, rtol=1e-6, atol=0)]
    assert np.array_equal(shown, heatmap_image(matrix, title))
    assert not any(t.name == "mechmon-writer" for t in threading.enumerate())  # joined on close


def test_the_heatmap_process_draws_the_same_pixels_as_matplotlib_here():
    from mechmon.figures import heatmap_image
    from mechmon.render import Renderer

    renderer = Renderer()
    matrix = np.array([[0.1, np.nan, 0.7], [0.0, 0.35, 1.0]])
    try:
        drawn = renderer(matrix, "induction/head_scores")
        assert renderer._child is not None and renderer._child.pid != os.getpid()  # drawn in another process
        # at the lowest priority: on a machine the training threads fill, they come first
        assert os.getpriority(os.PRIO_PROCESS, renderer._child.pid) == 19
    finally:
        renderer.close()
    assert drawn.dtype == np.uint8 and np.array_equal(drawn, heatmap_image(matrix, "induction/head_scores"))
    # closed (at interpreter exit, before the writers drain): drawn here, no new process
    assert np.array_equal(renderer(matrix, "induction/head_scores"), drawn) and renderer._child is None


def test_the_heatmap_process_encodes_the_png_as_tensorboard_would():
    import io

    from PIL import Image
    from torch.utils.tensorboard.summary import image

    from mechmon.figures import heatmap_image, heatmap_png
    from mechmon.render import Renderer

    renderer = Renderer()
    matrix = np.array([[0.1, np.nan, 0.7], [0.0, 0.35, 1.0]])
    try:
        data, shape = renderer.png(matrix, "induction/head_scores")
    finally:
        renderer.close()
    assert (data, shape) == heatmap_png(matrix, "induction/head_scores")  # the same bytes as encoded here
    rgb = heatmap_image(matrix, "induction/head_scores")
    by_tensorboard = image("t", rgb, dataformats="HWC").value[0].image  # what SummaryWriter.add_image would write
    assert by_tensorboard.encoded_image_string == data and (by_tensorboard.height, by_tensorboard.width) == shape[:2]
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert decoded.shape == shape and np.array_equal(decoded, heatmap_image(matrix, "induction/head_scores"))


def test_a_heatmap_process_that_cannot_start_falls_back_to_drawing_here_with_one_warning(tmp_path, monkeypatch):
    import mechmon.render
    from mechmon.figures import heatmap_image

    broken = tmp_path / "worker.py"
    broken.write_text("import sys; sys.exit(3)\n")
    monkeypatch.setattr(mechmon.render, "_WORKER", broken)
    renderer = mechmon.render.Renderer()
    matrix = np.eye(2)
    with pytest.warns(UserWarning, match="the heatmap process failed .*drawn in the writer thread") as seen:
        first, second = renderer(matrix, "t"), renderer(matrix, "t")
    assert len(seen) == 1 and np.array_equal(first, heatmap_image(matrix, "t")) and np.array_equal(first, second)


def test_a_run_that_never_closes_has_its_scalars_and_heatmaps_on_disk_after_the_interpreter_exits(tmp_path):
    """No ``close()``: the queue is drained at exit (the drawing process already ended: drawn in the thread)."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import torch
from mechmon import InductionProbe, LogitsProbe, Monitor
from tests.helpers import tiny_gpt2
model = tiny_gpt2()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
monitor = Monitor(model, optimizer=optimizer, probes=[InductionProbe(period=10, batch_size=2), LogitsProbe()],
                  schedule=1, image_schedule=1, log_dir={str(tmp_path)!r})
data = torch.randint(1, 64, (3, 2, 32), generator=torch.Generator().manual_seed(0))
for step, batch in enumerate(data, start=1):
    with monitor.step(step, batch):
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    events = read_events(tmp_path)
    assert scalar_steps(events, "mechmon/induction/score_max") == [1, 2, 3]
    assert [e.step for e in events.Images("mechmon/induction/head_scores")] == [1, 2, 3]
