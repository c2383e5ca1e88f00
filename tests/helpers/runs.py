"""Real runs, small: a token loader, a Lightning Trainer, a plain loop, hook counts, a state file that runs code."""

import os

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from tests.helpers.models import CTX, VOCAB


def token_loader(n: int = 64, batch: int = 4, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    data = torch.randint(1, VOCAB, (n, CTX), generator=gen)
    return DataLoader(data, batch_size=batch)


def make_trainer(tmp_path, callbacks, max_steps: int = 6, **kwargs) -> pl.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    kwargs.setdefault("logger", TensorBoardLogger(tmp_path, name="tb", version=0))
    kwargs.setdefault("enable_checkpointing", False)
    kwargs.setdefault("enable_progress_bar", False)
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        **kwargs,
    )


def hook_count(module: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def plain_run(monitor, model, optimizer, steps: int, data: torch.Tensor | None = None) -> None:
    """A plain loop of ``steps`` optimizer steps, each wrapped in ``monitor.step``; closes the monitor.

    ``data``: the batches ``[steps, B, T]`` (default: random tokens of the tiny models' vocabulary, 2 x ``CTX``).
    """
    if data is None:
        data = torch.randint(1, VOCAB, (steps, 2, CTX), generator=torch.Generator().manual_seed(0))
    for step, batch in enumerate(data[:steps], start=1):
        with monitor.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()


class Planted:
    """A pickle payload: unpickling it creates ``marker``, as a planted ``__reduce__`` would."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def plant(path, marker) -> None:
    """Write a state file at ``path`` that runs code (creates ``marker``) when unpickled; check that it would."""
    torch.save({"last_step": 4, "evil": Planted(str(marker))}, path)
    torch.load(path, weights_only=False)  # the payload works: an unsafe load runs it
    assert os.path.exists(marker)
    os.remove(marker)
