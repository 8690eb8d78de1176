"""Open the HTML report in headless Chromium, check it displays cleanly, and save a screenshot.

    python scripts/render_report.py [reports/report.html] [--out reports/report_screenshot.png]

The browser runs isolated: a fresh throw-away profile, no sandbox (containers), no GPU, no background
networking, no component updates, no sync. It is driven through the DevTools protocol over a pipe
(`--remote-debugging-pipe`: no port, no extra library), which is how the page's own problems are seen: console
errors, uncaught script errors, resources that failed to load, and images that did not decode (new headless
Chromium no longer writes console messages to its log). Exits 2 with one line when no Chromium is installed
(Debian: apt-get install chromium), the page has such a problem, or the screenshot is blank.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--remote-debugging-pipe")
BROKEN_IMAGES = ("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
                 ".map(i => i.alt || i.src.slice(0, 80))")


def find_browser(explicit: str | None = None) -> str | None:
    if explicit:
        return shutil.which(explicit) or (explicit if Path(explicit).is_file() else None)
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


class DevTools:
    """A minimal DevTools-protocol client over Chromium's pipe: fd 3 carries commands in, fd 4 replies and
    events out, each message JSON terminated by a NUL byte."""

    def __init__(self, browser: str, profile: str, timeout: float):
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        def wire() -> None:  # in the child: the pipe ends become the fds Chromium expects
            # Through fresh copies: a pipe end may already be fd 3 or 4, and dup2 onto itself would keep it
            # close-on-exec (os.pipe makes non-inheritable fds).
            commands_in, replies_out = os.dup(to_browser), os.dup(from_browser)
            os.dup2(commands_in, 3)
            os.dup2(replies_out, 4)

        self.process = subprocess.Popen([browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self.deadline = time.monotonic() + timeout
        self.events: list[dict] = []
        self._buffer = b""
        self._next_id = 0

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        found = next((e for e in self.events if e.get("method") == method), None)
        while found is None:
            event = self._read()
            self.events.append(event)
            found = event if event.get("method") == method else None
        return found

    def _read(self) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > self.deadline:
                raise RuntimeError("the browser did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"the browser closed its pipe (exit {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, OSError):
            pass
        for fd in (self._commands, self._replies):
            os.close(fd)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def page_problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            problems.append("uncaught: " + params.get("exceptionDetails", {}).get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            problems.append("log: " + params["entry"].get("text", "?"))
    return problems


def inspect(browser: str, page: Path, out: Path, width: int, height: int, timeout: float = 120) -> list[str]:
    """Load `page`, write a width x height screenshot to `out`; returns the page's problems (empty when clean)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="nanomorph-chromium-") as profile:
        tools = DevTools(browser, profile, timeout)
        try:
            target = tools.call("Target.createTarget", url="about:blank")["targetId"]
            session = tools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                tools.call(f"{domain}.enable", session)
            tools.call("Emulation.setDeviceMetricsOverride", session, width=width, height=height,
                       deviceScaleFactor=1, mobile=False)
            tools.call("Page.navigate", session, url=page.resolve().as_uri())
            tools.wait_for("Page.loadEventFired")
            broken = tools.call("Runtime.evaluate", session, expression=BROKEN_IMAGES,
                                returnByValue=True)["result"].get("value", [])
            shot = tools.call("Page.captureScreenshot", session, format="png")["data"]
            out.write_bytes(base64.b64decode(shot))
            problems = page_problems(tools.events) + [f"image did not load: {name}" for name in broken]
        finally:
            tools.close()
    return problems


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
        problems = inspect(browser, args.report, args.out, args.width, args.height)
    except (RuntimeError, OSError) as exc:
        print(f"render_report: error: {args.report}: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"render_report: error: {args.report}: {len(problems)} page problem(s), first: {problems[0]}",
              file=sys.stderr)
        return 2
    if is_blank(args.out):
        print(f"render_report: error: {args.out} is blank: the page did not render", file=sys.stderr)
        return 2
    width, height = Image.open(args.out).size
    print(f"{args.out}: {width} x {height} px screenshot of {args.report}, no page problems")
    return 0


if __name__ == "__main__":
    sys.exit(main())
