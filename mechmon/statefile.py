"""mechmon's own state files: written atomically, read without unpickling code.

A state file may come from elsewhere (a colleague's checkpoint folder, a Hub download), so it is read with
``torch.load(..., weights_only=True)``: tensors, numbers, strings, lists and dicts only; a file that holds anything
else (a planted ``__reduce__``) is refused, never run. A file that is missing, cut, garbage or of the wrong shape is
one warning naming it, and the caller starts afresh: a damaged state file never stops a run. Files are written to a
temporary file beside the target and renamed over it, so a kill leaves the old file or the new one, never a cut one.
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_state", "load_state", "read_safely", "one_line"]


def save_state(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename).

    Raises:
        OSError: if the folder cannot be written (the temporary file is removed; ``path`` keeps its old content).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def one_line(err: Exception) -> str:
    """A failure to read a file as one line: ``"<error type>: <first line of its message>"``."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def read_safely(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with its failures as one readable line.

    Raises:
        ValueError: if the file cannot be read, or holds Python objects that only a full unpickler would build.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's own notes on odd pickle protocols: the error says it all
            return torch.load(path, map_location="cpu", weights_only=True)  # never unpickle code
    except pickle.UnpicklingError:
        raise ValueError(
            "it holds Python objects beyond tensors, numbers, strings, lists and dicts (or is not a torch file); "
            "mechmon never unpickles code"
        ) from None
    except Exception as err:  # caveat: any unreadable file is one line
        raise ValueError(one_line(err)) from None


def load_state(path: str | os.PathLike, what: str, keys: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The dict saved in ``path``, or ``None`` with one warning when it cannot be trusted or read.

    Args:
        path: the file.
        what: what starts afresh when the file is refused (for the warning), e.g. ``"the monitor"``.
        keys: entries the dict must hold.
    """
    try:
        state = read_safely(path)
        problem = None if isinstance(state, dict) else f"it holds a {type(state).__name__}, not a dict"
        missing = [k for k in keys if problem is None and k not in state]
        problem = problem or (f"it lacks {missing}" if missing else None)
    except ValueError as err:
        problem = str(err)
    if problem is None:
        return state
    warnings.warn(f"mechmon: cannot use {path} ({problem}); {what} starts afresh", stacklevel=2)
    return None
