"""Hugging Face's own tensor parallel (``from_pretrained(tp_plan="auto")``, DTensor weights, 2 gloo ranks):
``python tests/distributed/hf_tp_worker.py OUT``.

A tiny Llama is saved to ``OUT/model`` (built from its config, no download), trained 3 steps unsharded in one
process (the reference), then loaded with the model's own tensor-parallel plan on each rank and trained on the same
rows; both watched by ``Monitor`` with every probe that applies. Each rank writes ``OUT/rank<r>.json``.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mechmon import Monitor  # noqa: E402
from tests.helpers import plain_run  # noqa: E402
from tests.helpers.archs import tiny_model  # noqa: E402
from tests.helpers.ranks import spawn  # noqa: E402

STEPS = 3


def probes() -> list:
    from mechmon.registry import get_probe, list_probes

    names = [n for n in list_probes() if n not in ("apm", "moe_pathway", "moe_routing", "icl")]
    return [get_probe(n)() for n in names] + [get_probe("icl")(early=10, late=100)]


def latest(model, data: torch.Tensor) -> dict:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    monitor = Monitor(model, optimizer=optimizer, probes=probes(), schedule=1, budget=None, log_dir=None)
    plain_run(monitor, model, optimizer, STEPS, data)
    return monitor.latest


def worker(rank: int, world: int, init: str, out: str) -> None:
    import faulthandler

    from transformers import AutoModelForCausalLM

    faulthandler.dump_traceback_later(200, exit=True)  # a hang prints every stack and ends the worker
    torch.set_num_threads(1)
    data = torch.randint(1, 256, (STEPS, 2, 128), generator=torch.Generator().manual_seed(0))
    reference = latest(tiny_model("llama").train(), data)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # as torchrun sets them
    model = AutoModelForCausalLM.from_pretrained(Path(out, "model"), tp_plan="auto").train()
    placement = str(getattr(model.model.layers[0].self_attn.o_proj.weight, "placements", None))
    result = {"reference": reference, "sharded": latest(model, data), "o_proj": placement}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":
    tiny_model("llama").save_pretrained(Path(sys.argv[1], "model"))
    spawn(worker, 2, sys.argv[1])
