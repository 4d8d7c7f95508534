"""Screenshot a page once it has really rendered, driving headless chromium over DevTools.

    python scripts/cdp_shot.py URL OUT.png [--wait-s 60] [--size 1600x1000]

`chromium --screenshot` captures at the load event, when MLflow's charts are still
spinners: they load lazily afterwards. Here chromium is driven over the DevTools protocol
on a pipe (--remote-debugging-pipe: NUL-terminated JSON requests on its fd 3, replies on
its fd 4), so the page can be polled until nothing is loading and a chart has drawn.
Standard library only.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import select
import subprocess
import sys
import time

CHROMIUM = os.environ.get("CHROMIUM", "chromium")

# What the page shows now: loading placeholders (MLflow's design system: du-bois-light-spin
# spinners and -skeleton blocks, before and after the first data arrive), plotly charts
# (.js-plotly-plot) and those of them whose traces have drawn a line or a marker, and
# whether an element the caller names (a CSS selector, or null for none) is showing.
READY_JS = """
((require) => {
  const shown = (el) => el.getClientRects().length > 0;
  const all = (sel) => [...document.querySelectorAll(sel)].filter(shown);
  const loading = all('[class*="-spin-spinning"], [class*="-skeleton"], [role="progressbar"],'
    + ' [aria-busy="true"]').length;
  const plots = all('.js-plotly-plot');
  const drawn = plots.filter((p) => p.querySelector('.scatterlayer .trace path.js-line[d],'
    + ' .scatterlayer .trace .point, .barlayer .trace .point')).length;
  const required = require === null || all(require).length > 0;
  return {loading, plots: plots.length, drawn, required};
})"""


class Chromium:
    """One headless chromium, spoken to over --remote-debugging-pipe."""

    def __init__(self, width: int, height: int) -> None:
        to_r, to_w = os.pipe()  # we write requests; chromium reads them on fd 3
        from_r, from_w = os.pipe()  # chromium writes replies on fd 4; we read them
        # the child's ends, moved clear of 3 and 4 so that dup2 onto them cannot clobber
        hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD_CLOEXEC, 10)
        hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_r, from_w):
            os.close(fd)

        def child_fds() -> None:
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--mute-audio",
                f"--window-size={width},{height}",
                "--remote-debugging-pipe",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=child_fds,
            pass_fds=(3, 4),
        )
        os.close(hi_r)
        os.close(hi_w)
        self.out, self.inp = to_w, from_r
        self.buf = b""
        self.next_id = 0
        self.session: str | None = None

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.inp], [], [], left)[0]:
                raise TimeoutError("no reply from chromium")
            chunk = os.read(self.inp, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.out, data) :]
        deadline = time.monotonic() + timeout
        while True:  # events in between are not needed here
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"page script failed: {res['exceptionDetails'].get('text')}")
        return res["result"].get("value")

    def open(self, url: str, width: int, height: int) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        self.call("Page.navigate", url=url)

    def close(self) -> None:
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            self.call("Browser.close", timeout=5)
        for fd in (self.out, self.inp):
            os.close(fd)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wait_rendered(chrome: Chromium, wait_s: float, require: str | None, settle_s: float) -> dict:
    """Poll READY_JS until the page has stayed ready for `settle_s` seconds; else raise.

    Ready: nothing loading, every chart on the page drawn, and `require` showing."""
    probe = f"{READY_JS}({json.dumps(require)})"
    deadline = time.monotonic() + wait_s
    since, state = None, {}
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            state = chrome.evaluate(probe) or {}
        except RuntimeError:  # between documents while navigating
            since = None
            continue
        if state["loading"] or state["drawn"] < state["plots"] or not state["required"]:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return state
    raise TimeoutError(f"not rendered after {wait_s:g}s: {state}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--wait-s", type=float, default=60, help="give up after (default 60)")
    ap.add_argument("--size", default="1600x1000", help="viewport WxH (default 1600x1000)")
    ap.add_argument("--settle-s", type=float, default=2, help="ready this long before the shot")
    ap.add_argument("--require", metavar="SELECTOR", help="wait until such an element shows")
    ap.add_argument(
        "--click",
        metavar="SELECTOR",
        action="append",
        default=[],
        help="once rendered, click the first such element, then wait again (repeatable)",
    )
    ap.add_argument("--css", default="", help="a style sheet to add before the shot")
    args = ap.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    start = time.monotonic()
    chrome = None
    try:
        chrome = Chromium(width, height)
        chrome.open(args.url, width, height)
        state = wait_rendered(chrome, args.wait_s, args.require, args.settle_s)
        for selector in args.click:
            click = "((el) => el ? (el.click(), true) : false)(document.querySelector(%s))"
            if not chrome.evaluate(click % json.dumps(selector)):
                raise RuntimeError(f"nothing to click: {selector}")
            state = wait_rendered(chrome, args.wait_s, args.require, args.settle_s)
        if args.css:
            style = "const s = document.createElement('style'); s.textContent = %s;"
            chrome.evaluate(style % json.dumps(args.css) + " document.head.append(s); true")
            time.sleep(0.5)
        shot = chrome.call("Page.captureScreenshot", format="png")
    except (OSError, RuntimeError, TimeoutError) as e:
        print(f"cdp_shot: {args.url}: {e}", file=sys.stderr)
        return 1
    finally:
        if chrome:
            chrome.close()
    with open(args.out, "wb") as f:
        f.write(base64.b64decode(shot["data"]))
    took = time.monotonic() - start
    print(f"{args.out}: {state['drawn']} charts drawn, {took:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
