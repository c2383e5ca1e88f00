import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

torch.set_num_threads(2)

VOCAB, CTX = 64, 48


def tiny_gpt2(attn: str = "sdpa", layers: int = 2, heads: int = 4, width: int = 32, ctx: int = CTX):
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(
        vocab_size=VOCAB,
        n_positions=ctx,
        n_embd=width,
        n_layer=layers,
        n_head=heads,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn)


class TinyLM(pl.LightningModule):
    """training_step returns only the loss, as most users write it."""

    def __init__(self, model=None, lr: float = 1e-3):
        super().__init__()
        self.model = model if model is not None else tiny_gpt2()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        return self.model(input_ids=batch, labels=batch).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


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


def plain_run(monitor, model, optimizer, steps: int) -> None:
    """A plain loop of ``steps`` optimizer steps on random tokens, each wrapped in ``monitor.step``; closes it."""
    data = torch.randint(1, VOCAB, (steps, 2, CTX), generator=torch.Generator().manual_seed(0))
    for step, batch in enumerate(data, start=1):
        with monitor.step(step, batch):
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    monitor.close()


@pytest.fixture
def lm():
    return TinyLM()


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
