#!/usr/bin/env python3
"""The Orthanc side of ``bench_render.py``: the same CT rendered by Debian's Orthanc 1.10.

Uploads a generated CT series to an Orthanc listening on 127.0.0.1:PORT (REST, no
authentication), then times ``/instances/{id}/frames/0/rendered`` exactly as
``bench_render.py`` times ours: first renders (in scroll order and in random order) and new
windows (JPEG and PNG, median and p95), and the whole series in order over 1 and 4
keep-alive connections; and a request that renders nothing (``GET /system``), for its HTTP
round trip alone. Orthanc keeps no decoded frames, so each of its requests decodes.

Orthanc (``apt-get install -y orthanc``) has no bind-address option and listens on every
interface, so run it and this client in a private network namespace (root)::

    python scripts/make_ct_series.py --out /tmp/ct300
    mkdir -p /tmp/orthanc-r/db && cat > /tmp/orthanc-r/orthanc.json <<'JSON'
    {"Name": "bench", "StorageDirectory": "/tmp/orthanc-r/db", "IndexDirectory": "/tmp/orthanc-r/db",
     "DicomPort": 4243, "HttpPort": 8043, "RemoteAccessAllowed": false, "HttpThreadsCount": 50,
     "Plugins": [], "StorageCompression": false}
    JSON
    unshare -n sh -c 'ip link set lo up; Orthanc /tmp/orthanc-r/orthanc.json >/tmp/orthanc-r/log 2>&1 &
        pid=$!; .venv/bin/python scripts/bench_render_orthanc.py --series /tmp/ct300 --port 8043;
        kill $pid; wait $pid'
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_render_orthanc.py`
    import benchlib  # type: ignore[no-redef]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--series", type=Path, required=True, help="folder of the generated CT")
    ap.add_argument("--port", type=int, default=8043)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    port = args.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(100):  # wait for Orthanc
        try:
            conn.request("GET", "/system")
            conn.getresponse().read()
            break
        except OSError:
            time.sleep(0.2)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    ids = []
    for path in sorted(args.series.glob("*.dcm")):  # CT0001.dcm … in scroll order
        conn.request("POST", "/instances", body=path.read_bytes())
        ids.append(json.loads(conn.getresponse().read())["ID"])

    def get(c: http.client.HTTPConnection, path: str, accept: str) -> float:
        t0 = time.perf_counter()
        c.request("GET", path, headers={"Accept": accept})
        resp = c.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise SystemExit(f"GET {path}: {resp.status} {body[:200]!r}")
        return (time.perf_counter() - t0) * 1000

    def url(i: str, query: str = "") -> str:
        return f"/instances/{i}/frames/0/rendered{query}"

    def lat(name: str, xs: list[float]) -> None:
        p95 = sorted(xs)[int(0.95 * (len(xs) - 1))]
        print(f"{name:40s} median {statistics.median(xs):7.2f} ms   p95 {p95:7.2f} ms", flush=True)

    # The same slices as bench_render.py: scroll order, then every other one shuffled.
    cold = benchlib.cold_slices(ids, args.reps)
    lat("CT first render JPEG", [get(conn, url(i), "image/jpeg") for i in cold.scroll_jpeg])
    lat("CT first render PNG", [get(conn, url(i), "image/png") for i in cold.scroll_png])
    lat("CT first render JPEG, random order", [get(conn, url(i), "image/jpeg") for i in cold.random_jpeg])
    lat("CT first render PNG, random order", [get(conn, url(i), "image/png") for i in cold.random_png])
    mid = cold.warm
    for kind in ("image/jpeg", "image/png"):
        lat(f"CT new window {kind[6:].upper()}",
            [get(conn, url(mid, f"?window-center={40 + k}&window-width={400 + k}"), kind) for k in range(args.reps)])
    # Orthanc sends no ETag with rendered images (so no 304 to time, as bench_render.py does
    # for ours); its HTTP round trip without rendering is a small REST answer.
    lat("HTTP round trip, no rendering (/system)", [get(conn, "/system", "application/json")
                                                    for _ in range(args.reps)])

    def scroll(conns: int, accept: str, query: str) -> float:
        def run(part: list[str]) -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for i in part:
                get(c, url(i, query), accept)

        threads = [threading.Thread(target=run, args=(ids[k::conns],)) for k in range(conns)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(ids) / (time.perf_counter() - t0)

    for conns in (1, 4):
        for kind in ("image/jpeg", "image/png"):
            rate = scroll(conns, kind, f"?window-center=41&window-width=40{conns}")
            print(f"series {kind[6:].upper()} {conns} conn {rate:10.1f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
