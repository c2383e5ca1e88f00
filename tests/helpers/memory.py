"""Peak-memory accounting that works on CPU: the bytes of every storage operators allocate, while they live."""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["LiveBytes"]


class LiveBytes(TorchDispatchMode):
    """Peak bytes of the storages that operators allocate while the mode is on (views of known storages excluded)."""

    def __init__(self, known) -> None:
        super().__init__()
        self.known = {t.untyped_storage().data_ptr() for t in known}
        self.refs: dict[int, list[int]] = {}  # storage -> [bytes, live tensors]
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t) -> None:
        ptr = t.untyped_storage().data_ptr()
        if ptr in self.known or ptr == 0:
            return
        if ptr not in self.refs:
            self.refs[ptr] = [t.untyped_storage().nbytes(), 0]
            self.now += self.refs[ptr][0]
            self.peak = max(self.peak, self.now)
        self.refs[ptr][1] += 1
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr) -> None:
        entry = self.refs.get(ptr)
        if entry is not None:
            entry[1] -= 1
            if entry[1] == 0:
                self.now -= entry[0]
                del self.refs[ptr]
