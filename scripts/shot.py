"""Screenshot a page once it has really rendered: Playwright driving the system's chromium.

    python scripts/shot.py URL OUT.png [--wait-s 60] [--size 1600x1000] [--require SEL]
                           [--click SEL ...] [--css STYLE]

`chromium --screenshot` captures at the load event, when MLflow's charts are still spinners:
they load lazily afterwards. Here the page is polled until nothing is loading, every chart has
drawn and the required element shows, for `--settle-s` seconds in a row. Playwright comes from
the `docs` extra (scripts/screenshots.sh installs it); the browser is Debian's chromium
(`CHROMIUM`, default /usr/bin/chromium), so nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from playwright.sync_api import Error, Page, sync_playwright

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# without these, chromium keeps trying the network, which this machine closes
FLAGS = ["--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]  # fmt: skip

# What the page shows now: loading placeholders (MLflow's design system: du-bois-light-spin
# spinners and -skeleton blocks, before and after the first data arrive), plotly charts
# (.js-plotly-plot) and those of them whose traces have drawn a line or a marker, and
# whether an element the caller names (a CSS selector, or null for none) is showing.
READY_JS = """
(require) => {
  const shown = (el) => el.getClientRects().length > 0;
  const all = (sel) => [...document.querySelectorAll(sel)].filter(shown);
  const loading = all('[class*="-spin-spinning"], [class*="-skeleton"], [role="progressbar"],'
    + ' [aria-busy="true"]').length;
  const plots = all('.js-plotly-plot');
  const drawn = plots.filter((p) => p.querySelector('.scatterlayer .trace path.js-line[d],'
    + ' .scatterlayer .trace .point, .barlayer .trace .point')).length;
  const required = require === null || all(require).length > 0;
  return {loading, plots: plots.length, drawn, required};
}"""


def wait_rendered(page: Page, wait_s: float, require: str | None, settle_s: float) -> dict:
    """Poll READY_JS until the page has stayed ready for `settle_s` seconds; else raise."""
    deadline = time.monotonic() + wait_s
    since, state = None, {}
    while time.monotonic() < deadline:
        page.wait_for_timeout(500)
        try:
            state = page.evaluate(READY_JS, require)
        except Error:  # between documents while navigating
            since = None
            continue
        if state["loading"] or state["drawn"] < state["plots"] or not state["required"]:
            since = None
        elif since is None:
            since = time.monotonic()
        elif time.monotonic() - since >= settle_s:
            return state
    raise TimeoutError(f"not rendered after {wait_s:g}s: {state}")


def shoot(args: argparse.Namespace) -> dict:
    """Open the page, wait, click what was asked (waiting again after each), add the style
    sheet, and write the screenshot; the last rendered state."""
    width, height = (int(v) for v in args.size.lower().split("x"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(args.url)
            state = wait_rendered(page, args.wait_s, args.require, args.settle_s)
            for selector in args.click:
                page.click(selector, timeout=args.wait_s * 1000)
                state = wait_rendered(page, args.wait_s, args.require, args.settle_s)
            if args.css:
                page.add_style_tag(content=args.css)
                page.wait_for_timeout(500)
            page.screenshot(path=args.out)
        finally:
            browser.close()
    return state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("out")
    ap.add_argument("--wait-s", type=float, default=60, help="give up after (default 60)")
    ap.add_argument("--size", default="1600x1000", help="viewport WxH (default 1600x1000)")
    ap.add_argument("--settle-s", type=float, default=2, help="ready this long before the shot")
    ap.add_argument("--require", metavar="SELECTOR", help="wait until such an element shows")
    ap.add_argument("--click", metavar="SELECTOR", action="append", default=[],
                    help="once rendered, click the first such element, then wait again")  # fmt: skip
    ap.add_argument("--css", default="", help="a style sheet to add before the shot")
    args = ap.parse_args(argv)
    start = time.monotonic()
    try:
        state = shoot(args)
    except (Error, TimeoutError) as exc:
        print(f"shot: {args.url}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    took = time.monotonic() - start
    print(f"{args.out}: {state['drawn']} charts drawn, {took:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
