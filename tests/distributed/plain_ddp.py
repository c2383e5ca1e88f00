"""Two gloo processes, a plain loop over a DDP-wrapped nanoGPT-shaped model with ``mechmon.Monitor``.

Run by tests/distributed/test_plain_ddp.py as ``python tests/distributed/plain_ddp.py OUT``; each rank writes what
it saw to ``OUT/rank<r>.json``. The ranks train on different data.
"""

import json
import os
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import mechmon  # noqa: E402
from mechmon import CollapseProbe, InductionProbe, LogitsProbe, Monitor, Threshold, every  # noqa: E402
from tests.helpers import CTX, VOCAB, hook_count  # noqa: E402
from tests.helpers.nanogpt import gpt  # noqa: E402

STEPS = 6
PACKAGE = os.path.dirname(mechmon.__file__) + os.sep  # not any path with 'mechmon' in it (.venv)
STEP = {"now": 0}
CALLS: list[int] = []


def counting(fn):
    def wrapper(*args, **kwargs):
        if sys._getframe(1).f_code.co_filename.startswith(PACKAGE):
            CALLS.append(STEP["now"])
        return fn(*args, **kwargs)

    return wrapper


def calls_by_step() -> dict[str, int]:
    """How many collectives mechmon's own files issued at each step (the JSON-ready count of ``CALLS``)."""
    return {str(step): CALLS.count(step) for step in sorted(set(CALLS))}


def worker(rank: int, port: int, out: Path, budget: float | None) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)  # a hang prints every stack and ends the worker
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for name in ["all_gather", "all_reduce", "broadcast", "reduce", "barrier", "all_gather_into_tensor"]:
        setattr(dist, name, counting(getattr(dist, name)))
    torch.set_num_threads(1)
    model = DistributedDataParallel(gpt())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    marker = Threshold("mechmon/logits/norm_mean", level=0.0, name="marker")
    probes = [InductionProbe(period=10, batch_size=2), LogitsProbe(), CollapseProbe()]
    monitor = Monitor(
        model, optimizer=optimizer, probes=probes, schedule=every(2), rules=[marker], log_dir=out / "tb", budget=budget
    )
    data = torch.randint(1, VOCAB, (STEPS, 4, CTX + 1), generator=torch.Generator().manual_seed(rank))
    hooks = {}
    for step, row in enumerate(data, start=1):
        STEP["now"] = step
        x, y = row[:, :-1], row[:, 1:]
        with monitor.step(step):  # no batch given: the engine reads the model's own inputs
            hooks[step] = hook_count(model)
            _, loss = model(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        if budget is not None:
            time.sleep(0.01 * rank)  # the ranks measure different times; their decisions must still agree
    monitor.close()
    result = {
        "rank": rank,
        "pid": os.getpid(),
        "collectives": calls_by_step(),
        "latest": monitor.latest,
        "alerts": [[a.rule, a.step] for a in monitor.alerts],
        "hooks_during": hooks,
        "hooks_after": hook_count(model),
        "adapter": type(monitor.adapter).__name__,
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()
    os._exit(0)  # caveat: freeing the DDP reducer after the group is gone hung about 1 run in 6 here (gloo)


def main() -> None:
    out = Path(sys.argv[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    budget = float(sys.argv[2]) if len(sys.argv) > 2 else None  # with a budget: both ranks must thin alike
    mp.spawn(worker, args=(port, out, budget), nprocs=2, join=True)


if __name__ == "__main__":
    main()
