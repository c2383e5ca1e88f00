"""Pipeline parallel (``torch.distributed.pipelining``, 2 stages on 2 gloo ranks): the monitor refuses at attach,
on both ranks alike (no rank waits for the other), naming the reason; the pipelined run then trains."""

import json
from pathlib import Path

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("pipeline_worker.py")


def test_pipeline_stages_are_refused_at_attach_on_every_rank_alike(tmp_path):
    done = run_ranks(SCRIPT, tmp_path, timeout=180)  # a rank left waiting would end here, in the timeout
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["steps"] == r1["steps"] == 2
    assert r0["refused"] is not None and "pipeline-parallel stages are not supported" in r0["refused"]
    assert "mechmon scan" in r0["refused"] and r1["refused"] is not None
