"""The FSDP2 test's ranks: probes on a ``fully_shard`` GPT-2 against the same probes on an unsharded copy.

``python tests/distributed/fsdp_worker.py OUT`` spawns 2 gloo ranks; each writes ``OUT/rank<r>.json``.
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

from mechmon import CollapseProbe, NLMProbe, WeightsProbe  # noqa: E402
from mechmon.adapters import HFAdapter  # noqa: E402
from mechmon.capture import resolve_names  # noqa: E402
from mechmon.distributed import reduce_states  # noqa: E402
from mechmon.engine import snapshot_forward  # noqa: E402
from tests.helpers import CTX, VOCAB, hook_count, tiny_gpt2  # noqa: E402


def scalars(probe, model, batch):
    """The monitor's path for one probe: setup, forward or weight reads, the packed reduction, compute."""
    adapter = HFAdapter(model)
    probe.attach(model, adapter, torch.device("cpu"))
    if probe.kind == "snapshot":
        snapshot_forward(probe, adapter, resolve_names(adapter, probe.requires))
    else:
        model.zero_grad()
        model(input_ids=batch, labels=batch).loss.backward()
        probe.before_optimizer_step(torch.optim.AdamW(model.parameters(), lr=1e-3))
        probe.evaluate()
    replicated = {n: spec.replicated for n, (_, spec) in probe.states().items()}
    states = [(t, spec.reduce) for t, spec in probe.states().values() if not spec.replicated]
    collectives = reduce_states([*states, (torch.zeros(1), "sum")])
    out = {k: float(v) for k, v in probe.compute().items() if v.ndim == 0}
    return {"values": out, "replicated": replicated, "collectives": collectives}


def run(rank: int, port: int, out: str) -> None:
    import faulthandler

    faulthandler.dump_traceback_later(120, exit=True)  # a hang prints every stack and ends the worker
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    batch = torch.randint(1, VOCAB, (4, CTX), generator=torch.Generator().manual_seed(1))  # same on both ranks
    reference, sharded = tiny_gpt2().eval(), tiny_gpt2().eval()  # same seed: same weights; eval: no dropout
    for block in sharded.transformer.h:
        fully_shard(block)
    fully_shard(sharded)
    result = {"hooks_before": hook_count(sharded)}  # FSDP2's own hooks
    for name, make in [("weights", WeightsProbe), ("nlm", lambda: NLMProbe(update_form=False))]:
        result[name] = {"ref": scalars(make(), reference, batch), "fsdp": scalars(make(), sharded, batch)}
    collapse = lambda: CollapseProbe(batch)  # noqa: E731
    result["collapse"] = {"ref": scalars(collapse(), reference, batch), "fsdp": scalars(collapse(), sharded, batch)}
    result["hooks_after"] = hook_count(sharded)
    result["local_rows"] = next(sharded.parameters()).to_local().shape[0]
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    dist.destroy_process_group()
    os._exit(0)  # caveat: skip the C++ teardown of gloo at exit, as the DDP worker does (an abort site under load)


def main() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(run, args=(port, sys.argv[1]), nprocs=2, join=True)


if __name__ == "__main__":
    main()
