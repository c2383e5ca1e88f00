"""Ranks that disagree about what is due never hang or abort the job: real gloo runs of 2, 3 and 4 processes.

Each case used to end in a hang (rank 0 alone in mechmon's collective) or in an abort (``Received data size doesn't
match expected size``): a probe waiting for its batch or disabled on one rank only changed what that rank sent.
"""

import json
from pathlib import Path

import pytest

from tests.helpers.ranks import run_ranks

SCRIPT = Path(__file__).with_name("disagree.py")


def ranks(tmp_path, case: str, world: int) -> tuple[list[dict], str]:
    done = run_ranks(SCRIPT, case, world, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)], done.stderr


def same_everywhere(results: list[dict]) -> None:
    for r in results[1:]:
        assert r["latest"] == results[0]["latest"] and r["alerts"] == results[0]["alerts"]
        assert r["disabled"] == results[0]["disabled"]


@pytest.mark.parametrize("world", [2, 4])
def test_rows_too_short_on_one_rank_skip_the_probe_on_every_rank(tmp_path, world):
    results, stderr = ranks(tmp_path, "short_rows", world)
    same_everywhere(results)
    assert all(r["steps"] == 8 for r in results)
    assert "mechmon/icl/score_nats" not in results[0]["latest"]  # rank 1 never held rows of 110 tokens
    assert "mechmon/induction/score_max" in results[0]["latest"] and "probe 'icl' has no probe batch" in stderr
    assert results[0]["disabled"] == []  # skipped, not failed


@pytest.mark.parametrize("world", [2, 3])
def test_an_all_padding_first_batch_on_one_rank_waits_on_every_rank(tmp_path, world):
    results, stderr = ranks(tmp_path, "padding", world)
    same_everywhere(results)
    assert "probe 'repr_collapse' has no probe batch" in stderr
    assert "mechmon/repr_collapse/mean_cos" in results[0]["latest"]  # taken from rank 1's second batch, then run
    assert results[0]["disabled"] == []


@pytest.mark.parametrize("world", [2, 4])
def test_a_schedule_raising_on_some_ranks_disables_its_probe_on_every_rank_at_attach(tmp_path, world):
    results, stderr = ranks(tmp_path, "schedule", world)
    same_everywhere(results)
    assert results[0]["disabled"] == ["induction"] and ["probe_failed", 0] in results[0]["alerts"]
    assert "mechmon/logits/norm_mean" in results[0]["latest"]
    assert "schedule of probe 'induction' raised over steps 1-1000" in stderr


def test_a_schedule_raising_later_on_one_rank_is_disabled_at_that_step_on_every_rank(tmp_path):
    results, stderr = ranks(tmp_path, "late_schedule", 4)
    same_everywhere(results)
    assert results[0]["disabled"] == ["induction"] and ["probe_failed", 5] in results[0]["alerts"]
    assert "raised KeyError at step 5" in stderr


def test_ddp_join_for_uneven_inputs_completes_and_says_why_nothing_was_evaluated(tmp_path):
    results, stderr = ranks(tmp_path, "join", 4)
    assert [r["steps"] for r in results] == [8, 8, 8, 4]
    assert all(r["latest"] == {} for r in results)
    assert "DistributedDataParallel.join() is on" in stderr


def test_a_slow_rank_holds_the_others_back_and_changes_nothing(tmp_path):
    results, _ = ranks(tmp_path, "slow", 4)
    same_everywhere(results)
    assert all(r["steps"] == 8 for r in results) and results[0]["disabled"] == []
    assert "mechmon/induction/score_max" in results[0]["latest"]


@pytest.mark.parametrize("world", [2, 3])
def test_rows_too_short_on_one_rank_under_lightning_ddp(tmp_path, world):
    done = run_ranks(SCRIPT.with_name("disagree_fit.py"), world, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    same_everywhere(results)
    assert all(r["steps"] == 6 for r in results) and results[0]["disabled"] == []
    assert "mechmon/icl/score_nats" not in results[0]["latest"] and "mechmon/logits/norm_mean" in results[0]["latest"]


def test_a_schedule_reading_rank_local_state_under_lightning_ddp(tmp_path):
    done = run_ranks(SCRIPT.with_name("disagree_fit.py"), 3, tmp_path, "schedule")
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(3)]
    same_everywhere(results)
    assert all(r["steps"] == 6 for r in results) and results[0]["disabled"] == ["induction"]
    assert "mechmon/logits/norm_mean" in results[0]["latest"]
