"""The ``mechmon`` command: list probes, scan checkpoints, summarise a run's TensorBoard events."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

__all__ = ["main", "print_summary", "read_run"]


Series = dict[str, list[tuple[int, float]]]


def read_run(run_dir: Path, namespace: str = "mechmon") -> tuple[Series, list[tuple[int, str]]]:
    """Read mechmon scalars and alert texts back from the event files under ``run_dir``.

    Returns:
        ``(scalars, alerts)``: key -> [(step, value)], and [(step, text)] sorted by step.

    Raises:
        FileNotFoundError: if ``run_dir`` holds no event file.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(Path(run_dir).rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event file under {run_dir}")
    scalars: Series = {}
    alerts: list[tuple[int, str]] = []
    for folder in sorted({f.parent for f in files}):
        acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}).Reload()
        for tag in acc.Tags()["scalars"]:
            if tag.startswith(f"{namespace}/"):
                scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["tensors"]:
            if tag.startswith(f"{namespace}/alerts"):
                alerts += [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)]
    return scalars, sorted(alerts)


def print_summary(run_dir: Path, console: Console | None = None) -> None:
    """Print the alerts and the last value of each unscoped mechmon scalar of a run."""
    console = console or Console()
    scalars, alerts = read_run(run_dir)
    table = Table(title=f"mechmon alerts - {run_dir}")
    table.add_column("step", justify="right")
    table.add_column("alert")
    for step, text in alerts:
        table.add_row(str(step), Markdown(text))  # alert texts are Markdown (severity in bold, rule as code)
    console.print(table if alerts else "no mechmon alerts fired")
    latest = Table(title="latest values")
    latest.add_column("metric")
    latest.add_column("step", justify="right")
    latest.add_column("value", justify="right")
    for key in sorted(k for k in scalars if k.count("/") == 2 and "/alerts/" not in k):
        step, value = scalars[key][-1]
        latest.add_row(key, str(step), f"{value:.4g}")
    console.print(latest)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mechmon`` console script; returns the exit code (2: a run folder without event files)."""
    parser = argparse.ArgumentParser(prog="mechmon", description="mechmon: live mechanistic monitoring of training")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probes", help="list the registered probes")
    summary = sub.add_parser("summary", help="alerts and latest values of a run folder")
    summary.add_argument("run_dir", type=Path)
    _scan_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "scan":
        return _scan(args)
    if args.command == "probes":
        import mechmon

        for name in mechmon.list_probes():
            cls = mechmon.get_probe(name)
            Console().print(f"[bold]{name}[/] ({cls.kind}): {(cls.__doc__ or '').strip().splitlines()[0]}")
        return 0
    try:
        print_summary(args.run_dir)
    except FileNotFoundError as err:
        print(f"mechmon summary: {err}", file=sys.stderr)  # one line, never wrapped
        return 2
    return 0


def _scan_parser(sub: Any) -> None:
    scan = sub.add_parser(
        "scan",
        help="run probes over saved checkpoints (Lightning .ckpt, HF checkpoint-<step> folders, state dicts)",
        description="Run snapshot probes over saved checkpoints in step order and write them to RUN_DIR as a live "
        "run would (same keys, at the checkpoints' steps), then run the alert rules over that sequence. Running "
        "again over the same RUN_DIR skips the checkpoints already done.",
    )
    scan.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files or folders, or folders of them")
    scan.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder for the event files")
    scan.add_argument("--probes", default="induction,weights", help="comma-separated probe names (mechmon probes)")
    scan.add_argument(
        "--model-factory", metavar="MODULE:FN", help="function building the model (needed unless HF folders)"
    )
    scan.add_argument("--batch", type=Path, help="torch.save'd token ids [B, T] for probes that read real text")
    scan.add_argument("--device", help="device to run the model on (default: where the factory puts it)")


def _scan(args: argparse.Namespace) -> int:
    """``mechmon scan``: exit 0 when every checkpoint was measured, 1 when some failed, 2 on a usage error."""
    import torch

    from mechmon.replay.scan import load_factory, probes_from_names, scan

    try:
        probes = probes_from_names([n.strip() for n in args.probes.split(",") if n.strip()])
        factory = load_factory(args.model_factory) if args.model_factory else None
        batch = torch.load(args.batch, weights_only=True) if args.batch else None
        result = scan(args.checkpoints, args.out, probes=probes, model_factory=factory, batch=batch, device=args.device)
    except (ValueError, KeyError, ImportError, AttributeError, OSError) as err:
        text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
        print(f"mechmon scan: {text}", file=sys.stderr)
        return 2
    console = Console(stderr=True)
    console.print(
        f"mechmon scan: {len(result.evaluated)} checkpoints measured, {len(result.skipped)} already done, "
        f"{len(result.failed)} failed, {len(result.alerts)} alerts -> {args.out}",
        highlight=False,
    )
    return 1 if result.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
