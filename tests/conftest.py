import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)

from tests.helpers.models import TinyLM  # noqa: E402


@pytest.fixture
def lm():
    return TinyLM()
