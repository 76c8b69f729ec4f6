#!/usr/bin/env python3
"""The reading room as a radiologist sees it: a real viewer in headless Chromium.

Against ``pacs serve`` (embedded defaults: filesystem + SQLite, waitress workers) started
here on loopback with the generated 300-slice 512x512 CT (``make_ct_series.py``), signed in
through the sign-in page like a user, it measures:

* **first image**: from navigating to ``/viewer/<study>`` to the first slice drawn on the
  viewport canvas (the viewer's ``pacs-first-image`` performance mark, set where the image
  is drawn, relative to the navigation start). Every run uses a fresh browser context,
  so the browser's HTTP cache and image caches are cold. Two server states:
  *server warm* (every slice already decoded in every HTTP worker) and *server cold*
  (a freshly started server that has decoded nothing; one restart per run).
* **scrolling**: ArrowDown key events dispatched at a steady rate (like a held key) from
  slice 1 to 300, in a fresh context. Counted: distinct slices drawn on the canvas (each
  change of the viewport's ``data-shown``, set where a slice is drawn) and distinct slices
  on screen at animation frames (``requestAnimationFrame`` samples, at most one per frame);
  images/s = distinct slices drawn / (last draw - first key). Server warm and cold.

Targets (issue #6): first image < 500 ms; >= 20 images/s sustained while scrolling.

Example::

    .venv/bin/python scripts/bench_viewer.py                 # about 2 minutes
    .venv/bin/python scripts/bench_viewer.py --runs 3 --cold-runs 1 --rates 30 --json out.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_viewer.py`
    import benchlib  # type: ignore[no-redef]

import pydicom

CHROMIUM = os.environ.get("PACS_TEST_CHROMIUM", "/usr/bin/chromium")
#: As tests/fixtures/browser.py: quiet, offline, Debian's Chromium (never a downloaded one).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
USER, PASSWORD = "bench", "bench password 1"
VIEWPORT: Any = {"width": 1280, "height": 900}  # a playwright ViewportSize

#: In the page: dispatch ArrowDown ``steps`` times at ``rate`` per second and record every
#: slice drawn (MutationObserver on data-shown) and the slice on screen at each animation
#: frame. Resolves when the last slice is drawn or ``timeoutMs`` after the last key.
SCROLL_JS = """
async ({steps, rate, timeoutMs}) => {
  const vp = window.pacsViewer.active;
  const last = vp.slices.length - 1;
  const draws = [], frames = [];
  const obs = new MutationObserver((records) => {
    const t = performance.now();
    for (const r of records) draws.push([t, Number(vp.el.dataset.shown)]);
  });
  obs.observe(vp.el, {attributes: true, attributeFilter: ["data-shown"]});
  let running = true;
  const sample = (t) => { frames.push([t, Number(vp.el.dataset.shown)]); if (running) requestAnimationFrame(sample); };
  requestAnimationFrame(sample);
  const t0 = performance.now();
  let sent = 0, tLastKey = t0;
  await new Promise((resolve) => {
    const period = 1000 / rate;
    const tick = () => {
      // Catch up on late timers, so the rate stays steady even when the page is busy.
      const due = Math.min(steps, Math.floor((performance.now() - t0) / period) + 1);
      while (sent < due) {
        document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowDown", bubbles: true}));
        sent += 1;
        tLastKey = performance.now();
      }
      if (sent < steps) setTimeout(tick, Math.max(0, t0 + sent * period - performance.now()));
      else resolve();
    };
    tick();
  });
  await new Promise((resolve) => {
    const check = () => {
      if (Number(vp.el.dataset.shown) === last || performance.now() - tLastKey > timeoutMs) resolve();
      else setTimeout(check, 5);
    };
    check();
  });
  running = false;
  obs.disconnect();
  return {t0, tLastKey, draws, frames, last, sent};
}
"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def study_of(folder: Path) -> tuple[str, list[str]]:
    """The study UID and the rendered-image paths of every slice, in instance order."""
    rows = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append((int(ds.InstanceNumber or 0), str(ds.StudyInstanceUID),
                     f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                     f"/instances/{ds.SOPInstanceUID}/frames/1/rendered"))
    rows.sort()
    return rows[0][1], [r[2] for r in rows]


def warm_server(port: int, token: str, urls: list[str], passes: int = 3, connections: int = 4) -> None:
    """Decode every slice in every HTTP worker: several passes over new keep-alive connections
    (a connection stays with one worker process, each worker has its own decoded cache)."""
    errors: list[BaseException] = []

    def run(part: list[str], n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for u in part:
                conn.request("GET", f"{u}?accept=image/png&warm={n}",
                             headers={"Authorization": f"Bearer {token}"})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {u}: HTTP {resp.status}")
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            conn.close()

    for n in range(passes):
        threads = [threading.Thread(target=run, args=(urls[i::connections], n)) for i in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]


class Browser:
    """One headless Chromium; a signed-in storage state reused by fresh contexts."""

    def __init__(self) -> None:
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise SystemExit(f"{CHROMIUM} is missing: apt-get install -y chromium")
        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        self.state: Any = None  # playwright StorageState: the session cookie

    def sign_in(self, base: str) -> None:
        ctx = self.browser.new_context(viewport=VIEWPORT)
        page = ctx.new_page()
        page.goto(f"{base}/login?next=/worklist")
        page.fill("#u", USER)
        page.fill("#p", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{base}/worklist*")
        self.state = ctx.storage_state()
        ctx.close()

    def context(self) -> Any:
        """A fresh context: empty HTTP cache, no decoded images; only the session cookie."""
        return self.browser.new_context(viewport=VIEWPORT, storage_state=self.state)

    def close(self) -> None:
        self.browser.close()
        self._pw.stop()


def first_image(browser: Browser, base: str, study: str) -> dict[str, float]:
    """Navigate to the viewer in a fresh context; milliseconds to the first slice drawn."""
    ctx = browser.context()
    try:
        page = ctx.new_page()
        page.goto(f"{base}/viewer/{study}", wait_until="commit")
        page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0", timeout=30_000)
        return page.evaluate("""() => {
          const nav = performance.getEntriesByType("navigation")[0];
          const img = performance.getEntriesByType("resource").filter((e) => e.name.includes("/rendered"))[0];
          return {
            first_image_ms: performance.getEntriesByName("pacs-first-image")[0].startTime,
            page_response_ms: nav.responseEnd,
            dom_ready_ms: nav.domContentLoadedEventEnd,
            image_request_ms: img ? img.responseEnd - img.startTime : null,
            image_request_start_ms: img ? img.startTime : null,
          };
        }""")
    finally:
        ctx.close()


def scroll_run(browser: Browser, base: str, study: str, rate: float, timeout_ms: float) -> dict[str, Any]:
    """Hold ArrowDown (at ``rate`` keys/s) from the first slice to the last, in a fresh context."""
    ctx = browser.context()
    try:
        page = ctx.new_page()
        page.goto(f"{base}/viewer/{study}")
        page.wait_for_function("window.pacsViewer?.active?.counters.shown > 0", timeout=30_000)
        page.wait_for_timeout(300)  # let the first prefetch settle, as a user reads slice 1 first
        steps = int(page.evaluate("pacsViewer.active.slices.length")) - 1
        r = page.evaluate(SCROLL_JS, {"steps": steps, "rate": rate, "timeoutMs": timeout_ms})
    finally:
        ctx.close()
    t0 = r["t0"]
    draws = [(t - t0, i) for t, i in r["draws"] if i > 0]
    drawn = {i for _, i in draws}
    on_screen = {i for _, i in r["frames"] if i > 0}
    t_end = draws[-1][0] if draws else 0.0
    reached = bool(draws) and draws[-1][1] == r["last"]
    keys_s = (r["tLastKey"] - t0) / 1000
    return {
        "key_rate": rate, "slices": r["last"] + 1, "keys": r["sent"], "keys_s": round(keys_s, 2),
        "reached_last": reached, "drawn": len(drawn), "on_screen": len(on_screen),
        "seconds": round(t_end / 1000, 2),
        "images_per_s": round(len(drawn) / (t_end / 1000), 1) if t_end else 0.0,
        "on_screen_per_s": round(len(on_screen) / (t_end / 1000), 1) if t_end else 0.0,
        "lag_after_last_key_ms": round(t_end - (r["tLastKey"] - t0), 0),
        "max_gap_ms": round(max((b[0] - a[0] for a, b in zip(draws, draws[1:])), default=0.0), 0),
    }


def summary(samples: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(samples), 1), "p95_ms": round(pct(samples, 0.95), 1),
            "min_ms": round(min(samples), 1), "max_ms": round(max(samples), 1), "runs": len(samples)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=15, help="first-image runs with the server warm")
    ap.add_argument("--cold-runs", type=int, default=3,
                    help="first-image runs on a freshly started server (one restart each)")
    ap.add_argument("--rates", default="30,60", help="ArrowDown key rates to scroll at, per second")
    ap.add_argument("--no-cold-scroll", action="store_true", help="skip scrolling on a cold server")
    ap.add_argument("--http-workers", type=int, default=0, help="server HTTP workers (0 = per core)")
    ap.add_argument("--keep", action="store_true", help="keep the generated CT and data folder")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="print the figures as JSON (to PATH if given)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    work = benchlib.fresh_workdir("minipacs-viewer-")
    ct_dir, data = work / "ct", work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    pacs = benchlib.pacs_command()
    print(f"generating the {args.slices}-slice CT in {work} …", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, str(ROOT / "scripts/make_ct_series.py"), "--out", str(ct_dir),
                    "--slices", str(args.slices)], check=True, capture_output=True)
    subprocess.run([pacs, "import", "-q", "--data-dir", str(data), str(ct_dir)], check=True, env=env)
    subprocess.run([pacs, "user", "add", USER, "--role", "radiologist", "--data-dir", str(data)],
                   input=f"{PASSWORD}\n{PASSWORD}\n", text=True, check=True, env=env, capture_output=True)
    token = subprocess.run([pacs, "token", "create", USER, "--data-dir", str(data)], check=True,
                           env=env, capture_output=True, text=True).stdout.strip()
    study, urls = study_of(ct_dir)
    server_args = ["--http-workers", str(args.http_workers)]
    out: dict[str, Any] = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, {platform.machine()}, "
                   f"Python {platform.python_version()}",
        "chromium": "", "slices": len(urls), "load_before": load_avg(),
    }
    browser = Browser()
    out["chromium"] = browser.browser.version
    try:
        with benchlib.pacs_server(data, env, extra_args=server_args) as srv:
            base = f"http://127.0.0.1:{srv.http_port}"
            browser.sign_in(base)
            print("warming the server (every slice decoded in every worker) …", file=sys.stderr, flush=True)
            warm_server(srv.http_port, token, urls)
            first_image(browser, base, study)  # not counted: Chromium's own first-use costs
            warm = [first_image(browser, base, study) for _ in range(args.runs)]
            out["first_image_server_warm"] = summary([w["first_image_ms"] for w in warm])
            out["first_image_server_warm"]["page_response_median_ms"] = round(
                statistics.median(w["page_response_ms"] for w in warm), 1)
            for key in ("dom_ready_ms", "image_request_start_ms", "image_request_ms"):
                out["first_image_server_warm"][key.replace("_ms", "_median_ms")] = round(
                    statistics.median(w[key] or 0 for w in warm), 1)
            out["scroll_server_warm"] = [scroll_run(browser, base, study, r, 5000) for r in rates]
        cold: list[dict[str, float]] = []
        for _ in range(args.cold_runs):
            with benchlib.pacs_server(data, env, extra_args=server_args) as srv:
                cold.append(first_image(browser, f"http://127.0.0.1:{srv.http_port}", study))
        if cold:
            out["first_image_server_cold"] = summary([c["first_image_ms"] for c in cold])
        if not args.no_cold_scroll:
            out["scroll_server_cold"] = []
            for r in rates:
                with benchlib.pacs_server(data, env, extra_args=server_args) as srv:
                    out["scroll_server_cold"].append(
                        scroll_run(browser, f"http://127.0.0.1:{srv.http_port}", study, r, 10_000))
    finally:
        browser.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)  # ~320 MB of CT and archive
    out["load_after"] = load_avg()
    print_table(out)
    if args.json:
        text = json.dumps(out, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


def print_table(out: dict[str, Any]) -> None:
    p = print
    p(f"\nviewer benchmark: {out['slices']}-slice CT 512x512, {out['machine']}, Chromium {out['chromium']}")
    p(f"load average before {out['load_before']}, after {out['load_after']}")
    p(f"\n{'first image (fresh browser context)':40s} {'median':>8s} {'p95':>8s} {'min':>8s} {'max':>8s} {'runs':>5s}")
    for key, label in (("first_image_server_warm", "server warm (slices decoded)"),
                       ("first_image_server_cold", "server cold (fresh server)")):
        if key in out:
            s = out[key]
            p(f"{label:40s} {s['median_ms']:6.0f}ms {s['p95_ms']:6.0f}ms {s['min_ms']:6.0f}ms "
              f"{s['max_ms']:6.0f}ms {s['runs']:5d}")
    if "first_image_server_warm" in out:
        s = out["first_image_server_warm"]
        p(f"  (warm medians after navigation: page HTML in {s['page_response_median_ms']:.0f} ms, "
          f"DOM ready {s['dom_ready_median_ms']:.0f} ms, first image asked for at "
          f"{s['image_request_start_median_ms']:.0f} ms, took {s['image_request_median_ms']:.0f} ms; "
          "target < 500 ms)")
    p(f"\n{'scroll 300 slices, ArrowDown held':34s} {'keys/s':>6s} {'drawn':>6s} {'seen':>5s} "
      f"{'secs':>6s} {'img/s':>6s} {'seen/s':>6s} {'lag':>6s} {'max gap':>7s}")
    for key, label in (("scroll_server_warm", "server warm"), ("scroll_server_cold", "server cold")):
        for r in out.get(key, []):
            p(f"{label:34s} {r['key_rate']:6.0f} {r['drawn']:6d} {r['on_screen']:5d} {r['seconds']:6.2f} "
              f"{r['images_per_s']:6.1f} {r['on_screen_per_s']:6.1f} {r['lag_after_last_key_ms']:4.0f}ms "
              f"{r['max_gap_ms']:5.0f}ms" + ("" if r["reached_last"] else "  (did not reach the last slice)"))
    p("  drawn = distinct slices drawn on the canvas; seen = distinct slices on screen at animation "
      "frames;\n  img/s = drawn / (last draw - first key); lag = last draw after the last key; "
      "target >= 20 img/s")


if __name__ == "__main__":
    sys.exit(main())
