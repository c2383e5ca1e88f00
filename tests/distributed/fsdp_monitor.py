"""Two gloo ranks, a plain loop over a sharded HF GPT-2 with the real ``mechmon.Monitor``: FSDP2 or FSDP1.

Run by tests/distributed/test_fsdp.py as ``python tests/distributed/fsdp_monitor.py OUT fsdp2|fsdp1``; each rank
writes ``OUT/<kind>_rank<r>.json``: the collectives mechmon's own files issued per step (counted at
``torch.distributed``), the monitor's latest values, and the full model's weight norm gathered at the end.
"""

import json
import os
import socket
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

from mechmon import CollapseProbe, InductionProbe, LogitsProbe, Monitor, NLMProbe, WeightsProbe, every  # noqa: E402
from tests.distributed.plain_ddp import STEP, calls_by_step, counting  # noqa: E402
from tests.helpers import CTX, VOCAB, hook_count, tiny_gpt2  # noqa: E402

STEPS = 4


def shard(model: torch.nn.Module, kind: str) -> torch.nn.Module:
    """``fully_shard`` each block and the root (FSDP2), or one ``FullyShardedDataParallel`` wrapper (FSDP1)."""
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in model.transformer.h:
            fully_shard(block)
        return fully_shard(model)
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(model, use_orig_params=True, device_id=torch.device("cpu"))  # CPU: named


def full_norm(model: torch.nn.Module, kind: str) -> float:
    """L2 norm of all trainable weights, gathered in full (the reference for ``weights/norm``)."""
    if kind == "fsdp2":
        tensors = [p.detach().full_tensor() for p in model.parameters() if p.requires_grad]
        return float(torch.sqrt(sum(t.double().pow(2).sum() for t in tensors)))
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model):
        return float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in model.parameters() if p.requires_grad)))


def worker(rank: int, port: int, out: Path, kind: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(150, exit=True)  # a hang prints every stack and ends the worker
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for name in ["all_gather", "all_reduce", "broadcast", "reduce", "barrier", "all_gather_into_tensor"]:
        setattr(dist, name, counting(getattr(dist, name)))
    torch.set_num_threads(1)
    model = shard(tiny_gpt2(), kind)  # same seed on both ranks: the same initial weights
    hooks_before = hook_count(model)  # the wrapper's own
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    text = torch.randint(1, VOCAB, (2, CTX), generator=torch.Generator().manual_seed(7))
    probes = [WeightsProbe(), NLMProbe(), CollapseProbe(text), InductionProbe(period=10, batch_size=2), LogitsProbe()]
    monitor = Monitor(model, optimizer=optimizer, probes=probes, schedule=every(2), log_dir=out / f"{kind}_tb")
    data = torch.randint(1, VOCAB, (STEPS, 2, CTX), generator=torch.Generator().manual_seed(rank))  # per-rank data
    for step, batch in enumerate(data, start=1):
        STEP["now"] = step
        with monitor.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()
    result = {
        "collectives": calls_by_step(),
        "latest": monitor.latest,
        "alerts": [[a.rule, a.step] for a in monitor.alerts],
        "disabled": sorted(monitor.disabled),
        "full_norm": full_norm(model, kind),
        "hooks_before": hooks_before,
        "hooks_after": hook_count(model),
    }
    (out / f"{kind}_rank{rank}.json").write_text(json.dumps(result, indent=1))
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    os._exit(0)  # caveat: skip gloo's C++ teardown at exit, as the other workers do


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(port, Path(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)


if __name__ == "__main__":
    main()
