"""The ``mechmon`` command: list probes, scan checkpoints, summarise a run's TensorBoard events."""

from __future__ import annotations

import argparse
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from mechmon.events import read_run

__all__ = ["main", "print_summary", "read_run", "runnable"]


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


def runnable(tool: str) -> str:
    """How to type ``tool`` (``tensorboard``, ``mechmon``) so that it runs in a fresh shell.

    The bare name when the shell finds this environment's copy; else its full path beside this interpreter (a
    virtual environment that is not activated, as ``make demo`` leaves it).
    """
    here = Path(sys.executable).parent / tool
    found = shutil.which(tool)
    if here.exists() and (found is None or Path(found).resolve() != here.resolve()):
        return str(here)
    return tool


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``mechmon`` console script; returns the exit code (2: a run folder without event files)."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"{message}\n"  # one plain line on stderr
    parser = argparse.ArgumentParser(prog="mechmon", description="mechmon: live mechanistic monitoring of training")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("probes", help="list the registered probes")
    summary = sub.add_parser("summary", help="alerts and latest values of a run folder")
    summary.add_argument("run_dir", type=Path)
    _scan_parser(sub)
    report = sub.add_parser("report", help="one picture of a run: each probe's stats, alert levels, heatmaps")
    report.add_argument("run_dir", type=Path)
    report.add_argument("-o", "--output", type=Path, help="file to write (default report.png, report.html)")
    report.add_argument("--html", action="store_true", help="an HTML page with the alerts and one figure per probe")
    args = parser.parse_args(argv)
    if args.command == "scan":
        return _scan(args)
    if args.command == "report":
        return _report(args)
    if args.command == "probes":
        import mechmon

        for name in mechmon.list_probes():
            cls = mechmon.get_probe(name)
            source = cls.source.replace("_", " ")
            Console().print(f"[bold]{name}[/] ({source}): {(cls.__doc__ or '').strip().splitlines()[0]}")
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
    scan.add_argument("--prefix", help="key prefix of the model's weights when a checkpoint holds several (ema, model)")


def _scan(args: argparse.Namespace) -> int:
    """``mechmon scan``: exit 0 when every checkpoint was measured, 1 when some failed, 2 on a usage error."""
    from mechmon.replay.scan import load_factory, probes_from_names, scan

    try:
        probes = probes_from_names([n.strip() for n in args.probes.split(",") if n.strip()])
        factory = load_factory(args.model_factory) if args.model_factory else None
        batch = _batch(args.batch) if args.batch else None
        options = {"model_factory": factory, "batch": batch, "device": args.device, "prefix": args.prefix}
        result = scan(args.checkpoints, args.out, probes=probes, **options)
    except (ValueError, TypeError, KeyError, ImportError, AttributeError, OSError) as err:
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


def _batch(path: Path) -> object:
    """The ``--batch`` file: token ids ``[B, T]`` (or a dict with ``input_ids``), read without unpickling code.

    Raises:
        ValueError: if the file cannot be read or holds no integer ids ``[B, T]``.
    """
    from mechmon.probes.fixed_batch import batch_tokens
    from mechmon.statefile import read_safely

    try:
        batch = read_safely(path)
    except ValueError as err:
        raise ValueError(f"cannot read --batch {path}: {err}") from None
    try:
        batch_tokens(batch, "--batch")
    except TypeError as err:
        raise ValueError(f"--batch {path}: {err}") from None
    return batch


def _report(args: argparse.Namespace) -> int:
    """``mechmon report``: exit 0 with the path written, 2 for a folder without events or no matplotlib."""
    from mechmon.report import write_report

    out = args.output or Path("report.html" if args.html else "report.png")
    wanted = (".html", ".htm") if args.html else (".png",)
    if out.suffix.lower() not in wanted:  # a usage error: one line, exit 2 (never HTML inside a .png)
        kind = "an HTML page (--html)" if args.html else "a PNG"
        print(f"mechmon report: -o {out} must end in {' or '.join(wanted)} for {kind}", file=sys.stderr)
        return 2
    try:
        written = write_report(args.run_dir, out, as_html=args.html)
    except (FileNotFoundError, ImportError) as err:
        print(f"mechmon report: {err}", file=sys.stderr)
        return 2
    print(f"mechmon report: wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
