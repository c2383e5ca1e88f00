"""Saved checkpoints: find them, read their step, and load their weights into one model.

Three formats, told apart by their shape on disk:

- a Hugging Face folder (``config.json`` beside safetensors or ``pytorch_model.bin``), named ``checkpoint-<step>``
  (the HF ``Trainer``) or ``step<N>`` / ``step-<N>`` (Pythia, OLMo revisions saved locally);
- a Lightning ``.ckpt`` file (its ``global_step`` is the step; the weights are its ``state_dict``);
- a plain ``torch.save`` state dict (``.pt`` / ``.pth`` / ``.bin``) with the step in its name (``step=500.pt``,
  ``model_step500.pt``, ``500.pt``).

Lightning and HF are never imported here except ``transformers`` to open an HF folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechmon.statefile import one_line

__all__ = ["Checkpoint", "find_checkpoints", "load_weights", "probe_batch_of"]

_STEP_IN_NAME = re.compile(r"(?:checkpoint|step|global_step|iter)[-_=]?(\d+)|^(\d+)$", re.IGNORECASE)
_FILE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin"}
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass(frozen=True)
class Checkpoint:
    """One saved checkpoint: path, optimizer step, format (``"hf"``, ``"lightning"`` or ``"state_dict"``)."""

    path: Path
    step: int
    format: str


def step_from_name(path: Path) -> int | None:
    """The step written in a checkpoint's file or folder name (``checkpoint-500``, ``step=500.ckpt``), else None."""
    stem = path.name if path.is_dir() else path.stem
    found = [m for m in _STEP_IN_NAME.finditer(stem)]
    if not found:
        return None
    match = found[-1]
    return int(match.group(1) or match.group(2))


def is_hf_folder(path: Path) -> bool:
    """Whether ``path`` is a folder ``from_pretrained`` can open (a config and weights)."""
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).exists() for w in _HF_WEIGHTS)


def _read(path: Path) -> Any:
    # tensors and containers only (no code runs); memory-mapped: reading a step pages in no weights
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def describe(path: Path) -> Checkpoint:
    """A :class:`Checkpoint` for one path.

    Raises:
        ValueError: if the path is no checkpoint of a known format or its step cannot be found.
    """
    path = Path(path)
    if is_hf_folder(path):
        step = step_from_name(path)
        if step is None:
            raise ValueError(f"{path}: a Hugging Face folder needs its step in its name (checkpoint-<step>, step<N>)")
        return Checkpoint(path, step, "hf")
    if not path.is_file() or path.suffix not in _FILE_SUFFIXES:
        raise ValueError(f"{path}: not a checkpoint (a .ckpt/.pt/.pth/.bin file or a folder with config.json)")
    if path.suffix == ".ckpt":
        return Checkpoint(path, int(_read(path)["global_step"]), "lightning")
    step = step_from_name(path)
    if step is None:
        raise ValueError(f"{path}: a state dict file needs its step in its name (step=500.pt, model_step500.pt)")
    return Checkpoint(path, step, "state_dict")


def find_checkpoints(paths: Iterable[str | Path]) -> tuple[list[Checkpoint], list[tuple[Path, str]]]:
    """The checkpoints among ``paths`` and inside the folders among them, in step order.

    A folder that is itself an HF checkpoint counts as one; other folders are searched one level deep.

    Returns:
        ``(checkpoints, refused)``: sorted by step, and ``(path, reason)`` for each path that could not be read.
    """
    found: list[Checkpoint] = []
    refused: list[tuple[Path, str]] = []
    for given in map(Path, paths):
        if not given.exists():
            refused.append((given, "no such file or folder"))
            continue
        candidates = [given] if given.is_file() or is_hf_folder(given) else sorted(given.iterdir())
        for path in candidates:
            if given.is_dir() and not is_hf_folder(given) and not (is_hf_folder(path) or path.suffix in _FILE_SUFFIXES):
                continue  # other files in a checkpoint folder (logs, configs) are not checkpoints
            try:
                found.append(describe(path))
            except Exception as err:  # caveat: one unreadable checkpoint must not stop the others
                refused.append((path, one_line(err)))
    return sorted(found, key=lambda c: (c.step, str(c.path))), refused


def _state_dict_of(ckpt: Checkpoint) -> Mapping[str, torch.Tensor]:
    if ckpt.format == "hf":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(ckpt.path).state_dict()
    data = _read(ckpt.path)
    if ckpt.format == "lightning" or (isinstance(data, Mapping) and "state_dict" in data):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{ckpt.path}: holds no state dict of tensors")
    return data


def matched(state: Mapping[str, torch.Tensor], wanted: set[str], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """``state`` with one leading prefix removed when that makes its keys the model's (``model.h.0...`` -> ``h.0...``).

    Args:
        state: the checkpoint's state dict.
        wanted: the model's keys.
        prefix: the leading prefix to strip (``"ema"``); ``None``: the keys as they are, else the one prefix that fits.

    Raises:
        ValueError: if no prefix makes the keys the model's, or several do (an EMA or teacher copy beside the model:
            the message names them; pass ``prefix``).
    """
    if prefix is None and wanted <= set(state):
        return {k: state[k] for k in wanted}
    prefixes = sorted({k.split(".", 1)[0] for k in state if "." in k}) if prefix is None else [prefix]
    fits = {}
    for p in prefixes:
        stripped = {k[len(p) + 1 :]: v for k, v in state.items() if k.startswith(p + ".")}
        if wanted <= set(stripped):
            fits[p] = {k: stripped[k] for k in wanted}
    if len(fits) > 1:
        raise ValueError(
            f"the checkpoint holds the model {len(fits)} times, under the prefixes {sorted(fits)} (an EMA or teacher "
            "copy?); choose one with prefix= (CLI: --prefix NAME)"
        )
    if fits:
        return next(iter(fits.values()))
    missing = sorted(wanted - set(state))[:3]
    where = f"under the prefix {prefix!r}" if prefix is not None else "with or without a leading prefix"
    raise ValueError(
        f"the checkpoint's keys do not match the model (missing {missing}, {where}); "
        "pass a model factory that builds the module this state dict belongs to"
    )


def load_weights(model: nn.Module, ckpt: Checkpoint, prefix: str | None = None) -> None:
    """Copy ``ckpt``'s weights into ``model`` in place (buffers too; the model keeps its device and dtype).

    Args:
        model: the module the weights belong to.
        ckpt: the checkpoint.
        prefix: the leading key prefix the model's weights sit under (see :func:`matched`).

    Raises:
        ValueError: if the checkpoint's keys do not match the model's, or match under several prefixes.
        OSError, RuntimeError: if the file cannot be read or a shape differs.
    """
    wanted = set(model.state_dict())
    model.load_state_dict(matched(_state_dict_of(ckpt), wanted, prefix), strict=True)


def probe_batch_of(ckpts: Iterable[Checkpoint]) -> dict[str, torch.Tensor] | None:
    """The probe batch a live mechmon run kept in a Lightning checkpoint (its callback state), if any.

    Returns:
        ``{"input_ids": [B, T], "attention_mask": [B, T]}`` from the first checkpoint that holds one, else None.
    """
    for ckpt in ckpts:
        if ckpt.format != "lightning":
            continue
        for state in _read(ckpt.path).get("callbacks", {}).values():
            for probe_state in (state.get("probes", {}) if isinstance(state, Mapping) else {}).values():
                if "probe_batch" in probe_state:
                    return {"input_ids": probe_state["probe_batch"], "attention_mask": probe_state["attention_mask"]}
    return None


ModelFactory = Callable[[], nn.Module]
