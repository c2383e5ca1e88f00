"""The tests' one helper package (fixtures live in ``tests/conftest.py`` only; no test module imports another).

- :mod:`tests.helpers.models`: tiny models from configs; :mod:`tests.helpers.runs`: real runs, small;
- :mod:`tests.helpers.events`: TensorBoard event files read back; :mod:`tests.helpers.cli`: the ``mechmon`` command;
- :mod:`tests.helpers.naive`: explicit-loop references; :mod:`tests.helpers.ranks`: multi-process launches that
  fail instead of hanging;
- :mod:`tests.helpers.archs`, ``forced``, ``memory``, ``nanogpt``, ``syncs``: architectures, forced-pattern
  adapters, memory accounting, a nanoGPT model, sync counting.

The common names are re-exported here: ``from tests.helpers import tiny_gpt2, plain_run, read_events``.
"""

from tests.helpers.cli import mechmon_command
from tests.helpers.events import read_events, scalar_steps
from tests.helpers.models import CTX, VOCAB, E, K, TinyLM, tiny_gpt2, tiny_moe
from tests.helpers.runs import hook_count, make_trainer, plain_run, plant, token_loader

__all__ = [
    "CTX",
    "VOCAB",
    "E",
    "K",
    "TinyLM",
    "hook_count",
    "make_trainer",
    "mechmon_command",
    "plain_run",
    "plant",
    "read_events",
    "scalar_steps",
    "tiny_gpt2",
    "tiny_moe",
    "token_loader",
]
