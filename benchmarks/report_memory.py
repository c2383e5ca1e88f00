"""Memory and time of ``mechmon report`` / ``mechmon summary`` on a long run's event files.

Writes a run of STEPS steps x KEYS mechmon keys (default 20,000 x 60, about 76 MB of events, as a week-long run
at every(10) would log) with TensorBoard's own writer, then runs each command in a fresh process and prints its
wall time and peak resident memory.

    python benchmarks/report_memory.py [--steps 20000] [--keys 60]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_run(folder: Path, steps: int, keys: int) -> int:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder), max_queue=10_000) as writer:
        for step in range(1, steps + 1):
            for k in range(keys):
                writer.add_scalar(f"mechmon/probe{k % 6}/stat{k}", (step * (k + 1)) % 97 / 97, step)
    return sum(f.stat().st_size for f in folder.glob("events.out.tfevents.*"))


def measure(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``mechmon ARGS`` in a fresh interpreter (its own ``ru_maxrss``)."""
    code = (
        "import resource, sys; from mechmon.cli import main; code = main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(code)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return wall, int(done.stderr.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--write", type=Path, help=argparse.SUPPRESS)  # the child that writes the run
    args = parser.parse_args()
    if args.write:
        write_run(args.write, args.steps, args.keys)
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        # written by a child: this process stays small, and a child's peak RSS starts from its parent's at fork
        subprocess.run([sys.executable, __file__, "--write", str(run), "--steps", str(args.steps), "--keys",
                        str(args.keys)], check=True)  # fmt: skip
        size = sum(f.stat().st_size for f in run.glob("events.out.tfevents.*"))
        print(f"run: {args.steps} steps x {args.keys} keys, {size / 2**20:.1f} MiB of events")
        for command in (["summary", str(run)], ["report", str(run), "-o", str(Path(tmp) / "report.png")]):
            wall, peak = measure(command)
            print(f"mechmon {command[0]:8s} {wall:6.1f} s  peak RSS {peak:6.0f} MiB")


if __name__ == "__main__":
    main()
