"""Screenshots of TensorBoard's tabs for a run folder, as a person sees them, into ``docs/``.

Needs TensorBoard (installed with mechmon), Chromium and Playwright, which are not mechmon's dependencies:

    apt-get install chromium && python -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    /tmp/pw/bin/python docs/screenshots.py runs/stdlib_induction/version_0 --tensorboard .venv/bin/tensorboard

TensorBoard's "Ignore outliers in chart scaling" is on by default and kept in the browser's local storage; the
screenshots show the default, and ``--no-outliers`` takes them with it off.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

TABS = {"custom_scalars": "custom_scalars", "images": "images", "time_series": "timeseries", "scalars": "scalars"}


def wait_for(url: str, seconds: float = 30) -> None:
    """Return once ``url`` answers (TensorBoard loading its run), or exit after ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"TensorBoard did not answer at {url}")


def main() -> None:
    """Start TensorBoard on the run, open each tab in Chromium, write one screenshot per tab."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--tensorboard", default="tensorboard")
    p.add_argument("--out", type=Path, default=Path("docs"))
    p.add_argument("--port", type=int, default=6123)
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--no-outliers", action="store_true", help="untick 'Ignore outliers in chart scaling'")
    args = p.parse_args()
    server = subprocess.Popen(
        [args.tensorboard, "--logdir", str(args.run_dir), "--port", str(args.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://localhost:{args.port}"
    try:
        wait_for(url)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            if args.no_outliers:
                page.evaluate("localStorage.setItem('_ignoreYOutliers', 'false')")
            for name, tab in TABS.items():
                page.goto(f"{url}/#{tab}")
                page.wait_for_timeout(6000)  # charts and images load after the page
                page.screenshot(path=str(args.out / f"tensorboard_{name}.png"))
                print(f"wrote {args.out / f'tensorboard_{name}.png'}")
            browser.close()
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
