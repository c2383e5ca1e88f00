from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def read_events(folder: Path) -> EventAccumulator:
    files = sorted(Path(folder).rglob("events.out.tfevents.*"))
    assert files, f"no event file under {folder}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    return acc.Reload()


def scalar_steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [e.step for e in acc.Scalars(tag)]
