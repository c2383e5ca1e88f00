"""Overhead of MechMonitor on the stdlib demo: the same run with and without the monitor.

    python benchmarks/overhead.py --steps 300 --every 50

Prints steps/s of each run and the wall-time ratio (with / without). Each run is a fresh process.
"""

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "stdlib_induction.py"


def timed_run(steps: int, every: int, monitor: bool, out: str) -> float:
    cmd = [sys.executable, str(EXAMPLE), "--max-steps", str(steps), "--every", str(every), "--no-live", "--out", out]
    if not monitor:
        cmd.append("--no-monitor")
    text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    match = re.search(r"trained (\d+) steps in ([\d.]+) s", text)
    if not match:
        raise RuntimeError(f"unexpected output:\n{text}")
    return float(match.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        base = min(timed_run(args.steps, args.every, False, out) for _ in range(args.repeats))
        with_monitor = min(timed_run(args.steps, args.every, True, out) for _ in range(args.repeats))
    print(f"without MechMonitor: {base:.1f} s ({args.steps / base:.2f} steps/s)")
    rate = args.steps / with_monitor
    print(f"with MechMonitor (every {args.every} steps): {with_monitor:.1f} s ({rate:.2f} steps/s)")
    print(f"overhead ratio: {with_monitor / base:.3f}")


if __name__ == "__main__":
    main()
