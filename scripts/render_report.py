"""Render the HTML report in headless Chromium and save a screenshot, to check that it displays.

    python scripts/render_report.py [reports/report.html] [--out reports/report_screenshot.png]

The browser runs isolated: a fresh throw-away profile, no sandbox (containers), no GPU, no background
networking, no component updates, no sync. The report is self-contained, so nothing is fetched. Exits 2 with
one line when no Chromium is installed (Debian: apt-get install chromium) or the screenshot is blank.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")


def find_browser(explicit: str | None = None) -> str | None:
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def screenshot(browser: str, page: Path, out: Path, width: int, height: int, timeout: float = 120) -> Path:
    """Screenshot of `page` (width x height px) written to `out`; raises RuntimeError when the browser fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanomorph-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out.resolve()}", page.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.is_file():
        raise RuntimeError(f"{browser} exited {done.returncode} without a screenshot: {done.stderr.strip()[-500:]}")
    return out


def is_blank(png: Path) -> bool:
    """True when every pixel has the same colour (an empty or failed page)."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    return bool((pixels == pixels[0, 0]).all())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="reports/report.html", type=Path)
    parser.add_argument("--out", default=Path("reports/report_screenshot.png"), type=Path)
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=6000, help="tall enough for the whole report")
    parser.add_argument("--browser", default=None, help=f"browser binary (default: first of {', '.join(BROWSERS)})")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        print(f"render_report: error: {args.report}: no such report (run `nanomorph report`)", file=sys.stderr)
        return 2
    browser = find_browser(args.browser)
    if browser is None:
        print("render_report: error: no Chromium found (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    try:
        out = screenshot(browser, args.report, args.out, args.width, args.height)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"render_report: error: {exc}", file=sys.stderr)
        return 2
    if is_blank(out):
        print(f"render_report: error: {out} is blank: the page did not render", file=sys.stderr)
        return 2
    width, height = Image.open(out).size
    print(f"{out}: {width} x {height} px screenshot of {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
