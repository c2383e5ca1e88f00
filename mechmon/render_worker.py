"""The heatmap-drawing process of :class:`mechmon.render.Renderer`: reads matrices on stdin, writes images.

Run by path, not as ``mechmon.render_worker``: it imports numpy, matplotlib and ``figures.py`` beside it, never the
``mechmon`` package (which imports torch). One request is a JSON line ``{"shape": [L, H], "title": ..., "png": bool}``
followed by ``L * H`` float64 values; one answer is a JSON line ``{"shape": [h, w, 3], "bytes": n}`` followed by
``n`` bytes: the RGB image (``h * w * 3``), or with ``"png"`` its PNG encoding (encoded here too, so that work also
runs at this process's low priority).
"""

import sys

sys.path.pop(0)  # run by path, its own folder comes first: mechmon's modules must not shadow anyone's imports

import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

import numpy as np  # noqa: E402


def _figures():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "figures.py")
    spec = importlib.util.spec_from_file_location("_mechmon_figures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Answer requests until stdin closes."""
    try:  # drawing is background work: on a busy machine the training threads come first
        os.nice(19)
    except OSError:
        pass
    figures = _figures()
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    for line in requests:
        head = json.loads(line)
        shape = tuple(int(n) for n in head["shape"])
        matrix = np.frombuffer(requests.read(8 * int(np.prod(shape))), dtype=np.float64).reshape(shape)
        if head.get("png"):
            data, shape = figures.heatmap_png(matrix, head["title"])
        else:
            rgb = np.ascontiguousarray(figures.heatmap_image(matrix, head["title"]), dtype=np.uint8)
            data, shape = rgb.tobytes(), rgb.shape
        answers.write((json.dumps({"shape": list(shape), "bytes": len(data)}) + "\n").encode())
        answers.write(data)
        answers.flush()


if __name__ == "__main__":
    main()
