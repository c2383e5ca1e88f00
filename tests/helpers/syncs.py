"""Counting the operations that make the host wait for the device, at the dispatcher (works on CPU).

``.item()``, ``bool(t)``, ``float(t)``, ``nonzero``, boolean-mask indexing and ``masked_select`` need a value or a
size that only the device knows: on a GPU each is a host-device sync. A dispatch mode sees them wherever they are
called from (mechmon, torch, numpy's ``__array__``), on the thread that runs the mode (the training thread).
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from types import ModuleType

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {
    "aten._local_scalar_dense.default",  # .item(), bool(), float(), int(), tolist()
    "aten.nonzero.default",
    "aten.masked_select.default",
    "aten.is_nonzero.default",
    "aten.equal.default",
    "aten._unique2.default",
    "aten.unique_dim.default",
    "aten.unique_consecutive.default",
}


_TORCH = os.path.dirname(torch.__file__) + os.sep


class Syncs(TorchDispatchMode):
    """``with Syncs() as syncs:`` -> ``syncs.counts``: (op name, origin) -> how many data-dependent ops ran.

    The origin is the innermost calling file outside torch itself (``mechmon/probes/rank.py``, a model's
    ``modeling_gpt2.py``), so a sync inside ``tensor[mask]`` or ``x in t`` is charged to the code that wrote it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[tuple[str, str]] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in _ALWAYS or (name.startswith("aten.index.") and _bool_index(args)):
            self.counts[(name, _origin())] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def within(self, package: ModuleType) -> dict[tuple[str, str], int]:
        """The syncs whose origin is a file of ``package`` (an imported package, e.g. ``mechmon``).

        Its folder is matched as a path prefix: a folder name alone would also match a clone or a virtual environment
        that happens to be called the same (``/tmp/x/mechmon/.venv/.../transformers``).
        """
        folder = os.path.dirname(os.path.abspath(package.__file__)) + os.sep
        return {key: n for key, n in self.counts.items() if key[1].startswith(folder)}


def _origin() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        if not frame.filename.startswith(_TORCH) and not frame.filename.endswith("syncs.py"):
            return f"{frame.filename}:{frame.lineno}"
    return "?"


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
