"""Multi-process tests: every launch has a timeout that kills every rank and fails the test instead of hanging."""

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_ranks(script: Path, *args: object, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``script`` (which spawns the ranks) in its own process group; on timeout kill the group and fail."""
    cmd = [sys.executable, str(script), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # every rank, not only the launcher
        out, err = proc.communicate()
        pytest.fail(f"{script.name} {args} hung: every rank killed after {timeout} s\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def rank_results(script: Path, mode: str, out: Path, world: int, timeout: float = 300) -> list[dict]:
    """Run ``script MODE OUT`` (:func:`run_ranks`: a hang fails) and read what each rank wrote, ``OUT/rank<r>.json``."""
    done = run_ranks(script, mode, out, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world)]


def spawn(worker: Callable[..., None], world: int, *args: object) -> None:
    """Start ``world`` gloo ranks of ``worker(rank, world, init_method, *args)`` on a free local port, and join them."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        init = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    mp.spawn(worker, args=(world, init, *args), nprocs=world, join=True)
