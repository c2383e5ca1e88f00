"""Ranks that disagree: gloo processes, a plain DDP loop over a tiny HF GPT-2, ``mechmon.Monitor`` watching it.

``python tests/distributed/disagree.py CASE WORLD OUT``; each rank writes ``OUT/rank<r>.json``. Cases:

- ``short_rows``: rank 1's rows hold 60 real tokens, too few for ``ICLProbe(early=10, late=100)``;
- ``padding``: rank 1's first batch is all padding (the plateau probes take their rows from training);
- ``schedule``: a probe's schedule reads state that only rank 0 holds past step 1 (it raises on the others);
- ``late_schedule``: the same schedule raises on the last rank once its state is lost at step 5 (after attach);
- ``join``: DDP's ``join()`` for uneven inputs, the last rank with 4 batches fewer;
- ``slow``: the last rank sleeps 0.3 s before each forward (the others wait for it in every collective).
"""

import contextlib
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

from mechmon import CollapseProbe, ICLProbe, InductionProbe, LogitsProbe, Monitor, RankProbe, every  # noqa: E402
from tests.helpers import VOCAB, tiny_gpt2  # noqa: E402

STEPS, CTX = 8, 128
LOCAL: dict[str, int] = {}


def rank_local_schedule(step: int) -> bool:
    """A schedule reading state that only some ranks hold (a user's mistake mechmon must survive)."""
    if LOCAL.get("broken_from", 10**9) <= step:
        raise KeyError("every")
    return step % LOCAL["every"] == 0


def probes(case: str) -> list:
    if case == "short_rows":
        return [ICLProbe(early=10, late=100), InductionProbe(period=10, batch_size=2), LogitsProbe()]
    if case in ("schedule", "late_schedule"):
        return [InductionProbe(period=10, batch_size=2, schedule=rank_local_schedule), LogitsProbe()]
    return [CollapseProbe(), RankProbe(), InductionProbe(period=10, batch_size=2), LogitsProbe()]


def batches(case: str, rank: int, world: int) -> list[dict]:
    gen = torch.Generator().manual_seed(rank)
    n = STEPS - 4 if case == "join" and rank == world - 1 else STEPS
    out = []
    for i in range(n):
        ids = torch.randint(1, VOCAB, (2, CTX), generator=gen)
        mask = torch.ones_like(ids)
        if case == "short_rows" and rank == 1:
            mask[:, 60:] = 0
        if case == "padding" and rank == 1 and i == 0:
            mask[:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)})
    return out


def worker(rank: int, world: int, port: int, case: str, out: Path) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    LOCAL["every"] = 1 if case == "late_schedule" else 2
    if case == "schedule" and rank > 0:
        LOCAL["broken_from"] = 2  # the monitor's constructor tries step 1 only
    model = DistributedDataParallel(tiny_gpt2(ctx=CTX))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer=optimizer, probes=probes(case), schedule=every(2), log_dir=out / "tb")
    done = 0
    join = model.join() if case == "join" else contextlib.nullcontext()
    with join:
        for step, batch in enumerate(batches(case, rank, world), start=1):
            if case == "late_schedule" and rank == world - 1 and step == 5:
                LOCAL["broken_from"] = 0  # the rank-local state the schedule reads is gone
            if case == "slow" and rank == world - 1:
                time.sleep(0.3)
            with monitor.step(step):  # the batch is read from the model's inputs
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad()
            done = step
    monitor.close()
    result = {
        "rank": rank,
        "steps": done,
        "disabled": sorted(monitor.disabled),
        "latest": monitor.latest,
        "alerts": [[a.rule, a.step] for a in monitor.alerts],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.destroy_process_group()
    os._exit(0)  # caveat: freeing the DDP reducer after the group is gone can hang under gloo


def main() -> None:
    case, world, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, case, out), nprocs=world, join=True)


if __name__ == "__main__":
    main()
