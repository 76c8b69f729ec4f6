#!/usr/bin/env python3
"""End-to-end latency of server-side rendering over HTTP, from a separate client process.

What it measures (issue "display pipeline"), against ``pacs serve`` on the embedded
defaults (filesystem + SQLite, waitress workers) started here on a fresh data folder:

* the generated 512x512 CT (``make_ct_series.py``, 300 slices): first render of a
  slice (cold: index look-up + blob read + decode + window + encode) in scroll order (the
  server may have rendered it ahead) and in random order (it cannot have), and a re-render
  of an already decoded slice with a new window (warm), PNG and JPEG, median and p95;
* the whole 300-slice series in scroll order, over 1 and over 4 keep-alive connections,
  images per second, cold (first pass) and warm (second pass, new window so no HTTP cache);
* the same request revalidated with its ETag (a 304 without a body): what the HTTP server,
  the sign-in check and the routing cost without any rendering;
* the 2048x2500 CR (``make_cr.py``) at full size and in a 1024-pixel viewport, PNG and JPEG.

Every request is a real HTTP request with a bearer token (as a script would send), on
persistent connections (as a browser would keep). Nothing is cached by the client: a new
window or a cache-busting parameter makes every URL distinct.

Example::

    .venv/bin/python scripts/bench_render.py            # everything, about 2 minutes
    .venv/bin/python scripts/bench_render.py --slices 100 --reps 30
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_render.py`
    import benchlib  # type: ignore[no-redef]

import pydicom

from pacs.config import Settings  # noqa: E402


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Client:
    """One keep-alive HTTP connection with a bearer token."""

    def __init__(self, port: int, token: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.etag: str | None = None  # of the last response

    def get(self, path: str, accept: str, etag: str | None = None) -> tuple[float, int]:
        """ms and body bytes of one GET; with ``etag``, a revalidation that must answer 304."""
        headers = {**self.headers, "Accept": accept, **({"If-None-Match": etag} if etag else {})}
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=headers)
        resp = self.conn.getresponse()
        body = resp.read()
        dt = (time.perf_counter() - t0) * 1000
        self.etag = resp.getheader("ETag")
        if resp.status != (304 if etag else 200):
            raise RuntimeError(f"GET {path}: {resp.status} {body[:200]!r}")
        return dt, len(body)


def instance_urls(folder: Path) -> list[str]:
    rows = []
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        rows.append((int(ds.InstanceNumber or 0), f"/dicomweb/studies/{ds.StudyInstanceUID}/series/"
                     f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/rendered"))
    return [u for _, u in sorted(rows)]


def scroll(port: int, token: str, urls: list[str], accept: str, connections: int, query: str) -> float:
    """Render every URL once, split round-robin over ``connections``; return images/s."""
    errors: list[BaseException] = []

    def run(part: list[str]) -> None:
        c = Client(port, token)
        try:
            for u in part:
                c.get(u + query, accept)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    parts = [urls[i::connections] for i in range(connections)]
    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return len(urls) / (time.perf_counter() - t0)


def warm_workers(port: int, token: str, url: str, workers: int) -> None:
    """One request on each HTTP worker of a fresh server, as a server that has been up for a
    while would be: ``workers`` connections opened one after another and kept open, which
    the server's accept balancing (``pacs.serve.balance_accepts``) hands to distinct workers."""
    clients = [Client(port, token) for _ in range(workers)]
    for c in clients:
        c.get(url, "image/jpeg")
    for c in clients:
        c.conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--reps", type=int, default=50, help="samples per latency figure")
    ap.add_argument("--http-workers", type=int, default=0, help="server HTTP workers (0 = per core)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    work = benchlib.fresh_workdir("minipacs-render-")
    ct_dir, cr_dir = work / "ct", work / "cr"
    py = sys.executable
    print(f"generating {args.slices}-slice CT and a 2048x2500 CR in {work} …", flush=True)
    subprocess.run([py, str(ROOT / "scripts/make_ct_series.py"), "--out", str(ct_dir),
                    "--slices", str(args.slices)], check=True, capture_output=True)
    subprocess.run([py, str(ROOT / "scripts/make_cr.py"), "--out", str(cr_dir)], check=True,
                   capture_output=True)
    data = work / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    pacs = benchlib.pacs_command()
    subprocess.run([pacs, "import", "-q", "--data-dir", str(data), str(ct_dir), str(cr_dir)],
                   check=True, env=env)
    # The first start creates the admin; a token is what a script would use.
    workers = Settings(http_workers=args.http_workers).resolved_http_workers  # what the server starts
    results: dict[str, object] = {"machine": f"{platform.node()} {os.cpu_count()} cores, "
                                  f"Python {platform.python_version()}"}
    with benchlib.pacs_server(data, env, extra_args=["--http-workers", str(args.http_workers)]) as srv:
        token = subprocess.run([pacs, "token", "create", "admin", "--data-dir", str(data)],
                               check=True, env=env, capture_output=True, text=True).stdout.strip()
        port = srv.http_port
        ct = instance_urls(ct_dir)
        cr = instance_urls(cr_dir)[0]
        c = Client(port, token)
        c.get(ct[0], "image/jpeg")  # first request of the worker: imports, connections

        def lat(name: str, samples: list[float]) -> None:
            results[name] = {"median_ms": round(statistics.median(samples), 2),
                             "p95_ms": round(pct(samples, 0.95), 2)}
            print(f"{name:38s} median {statistics.median(samples):7.2f} ms   p95 {pct(samples, .95):7.2f} ms",
                  flush=True)

        # Cold: slices never rendered in this process (disjoint sets for the two formats), in
        # scroll order (as a viewer asks for them: the server renders the next ones ahead), then
        # in random order (nothing can be rendered ahead): the whole cost of a first render.
        cold = benchlib.cold_slices(ct, args.reps)
        lat("CT cold JPEG", [c.get(u, "image/jpeg")[0] for u in cold.scroll_jpeg])
        lat("CT cold PNG", [c.get(u, "image/png")[0] for u in cold.scroll_png])
        lat("CT cold JPEG, random order", [c.get(u, "image/jpeg")[0] for u in cold.random_jpeg])
        lat("CT cold PNG, random order", [c.get(u, "image/png")[0] for u in cold.random_png])
        warm = cold.warm
        # Warm: the same decoded slice, a new window every time.
        lat("CT new window JPEG", [c.get(f"{warm}?window={40 + i},{400 + i}", "image/jpeg")[0]
                                   for i in range(args.reps)])
        lat("CT new window PNG", [c.get(f"{warm}?window={40 + i},{400 + i}", "image/png")[0]
                                  for i in range(args.reps)])
        # The same request revalidated (If-None-Match, 304, no body): everything but the
        # rendering (HTTP server, sign-in, routing, ETag), what "new window" pays on top of
        # the window and the encoding.
        c.get(f"{warm}?window=40,400", "image/jpeg")
        lat("CT JPEG revalidated (304)", [c.get(f"{warm}?window=40,400", "image/jpeg", c.etag)[0]
                                          for _ in range(args.reps)])

        # The CR: cold once, then warm with new windows.
        cold_cr = c.get(cr + "?quality=90", "image/jpeg")[0]
        results["CR cold JPEG full"] = {"ms": round(cold_cr, 1)}
        print(f"{'CR cold JPEG full':38s} {cold_cr:7.1f} ms", flush=True)
        reps = max(5, args.reps // 5)
        lat("CR full PNG", [c.get(f"{cr}?window={2000 + i},{4000 + i}", "image/png")[0] for i in range(reps)])
        lat("CR full JPEG", [c.get(f"{cr}?window={2000 + i},{4000 + i}", "image/jpeg")[0] for i in range(reps)])
        lat("CR viewport 1024 PNG", [c.get(f"{cr}?viewport=1024,1024&window={2000 + i},{4000 + i}",
                                           "image/png")[0] for i in range(reps)])
        lat("CR viewport 1024 JPEG", [c.get(f"{cr}?viewport=1024,1024&window={2000 + i},{4000 + i}",
                                            "image/jpeg")[0] for i in range(reps)])

        # Whole series in scroll order, every slice already decoded: each HTTP worker process
        # has its own cache and a connection stays with one worker, so warm up with a few
        # passes over new connections first; then a new window per pass (no HTTP cache hit).
        for i in range(3):
            scroll(port, token, ct, "image/jpeg", 4, f"?window=40,{400 + i}")
        for conns in (1, 4):
            for kind in ("image/jpeg", "image/png"):
                tag = f"{kind.split('/')[1].upper()} {conns} conn"
                rate = scroll(port, token, ct, kind, conns, f"?window=41,401&c={conns}{kind[-3:]}")
                results[f"series warm {tag}"] = round(rate, 1)
                print(f"{'series ' + tag + ' (decoded)':38s} {rate:7.1f} images/s", flush=True)
    # Cold scrolling needs a server that has decoded nothing: restart it for each pass.
    for conns in (1, 4):
        for kind in ("image/jpeg", "image/png"):
            with benchlib.pacs_server(data, env, extra_args=["--http-workers", str(args.http_workers)]) as srv:
                warm_workers(srv.http_port, token, cr, workers)  # the workers, not the slices
                tag = f"{kind.split('/')[1].upper()} {conns} conn"
                rate = scroll(srv.http_port, token, ct, kind, conns, "")
                results[f"series cold {tag}"] = round(rate, 1)
                print(f"{'series ' + tag + ' (cold)':38s} {rate:7.1f} images/s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
