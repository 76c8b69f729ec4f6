#!/usr/bin/env python3
"""DICOMweb latency against the real ``pacs serve``: WADO-RS series metadata and QIDO-RS study search.

Two measurements, each a series of HTTP requests (``requests`` with HTTP Basic, one kept-alive
connection, end to end: request, server work, full body read) after one warm-up request:

1. **Series metadata** of a synthetic 300-slice 512x512 CT (``scripts/make_ct_series.py``),
   stored through the ingest path (``IngestService``, as C-STORE does), so the metadata cache
   is built at ingest. Target: p95 < 200 ms.
2. **QIDO-RS study search** on a 100,000-study index filled by the benchmark-only bulk path of
   ``scripts/bench_find.py`` (rows straight into the tables; not for real data): the queries of
   that benchmark (exact PatientID, one-day date range, Vietnamese name prefix without and with
   accents) plus the first page of an unfiltered worklist (``limit=25``), each with the usual
   worklist fields. Target: p95 < 100 ms.

Example::

    .venv/bin/python scripts/bench_dicomweb.py --slices 300 --studies 100000 --runs 30
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
try:
    from scripts import bench_find, benchlib
except ImportError:  # run as `python scripts/bench_dicomweb.py`
    import bench_find  # type: ignore[no-redef]
    import benchlib  # type: ignore[no-redef]

from pacs.ingest import IngestService, Origin  # noqa: E402
from pacs.store.blobs import FilesystemBlobStore  # noqa: E402
from pacs.store.index import Index  # noqa: E402

FIELDS = "includefield=StudyDescription&includefield=ModalitiesInStudy&includefield=NumberOfStudyRelatedInstances"
QIDO_QUERIES = [
    ("exact PatientID", "PatientID=BN0012345"),
    ("one-day StudyDate range", "StudyDate=20250315-20250315"),
    ("name prefix, no accents", "PatientName=dang%20quoc%20h*"),
    ("name prefix, accents", "PatientName=%C4%90%E1%BA%B7ng%5EQu%E1%BB%91c%20H*"),
    ("worklist page (limit=25)", "limit=25"),
]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def session_for(data_dir: Path, env: dict[str, str]) -> requests.Session:
    """A session with a bearer token (``pacs token create``), as scripts are meant to sign in.

    (HTTP Basic would re-run argon2, slow on purpose, whenever the 5-second credential cache
    expires: a sign-in cost, not a DICOMweb one.)
    """
    out = subprocess.run([benchlib.pacs_command(), "token", "create", "admin", "--data-dir", str(data_dir)],
                         env=env, capture_output=True, text=True, check=True)
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + out.stdout.strip()
    return s


def timed(s: requests.Session, url: str, runs: int, **headers: str) -> tuple[list[float], requests.Response]:
    r = s.get(url, headers=headers, timeout=60)  # warm-up
    r.raise_for_status()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = s.get(url, headers=headers, timeout=60)
        _ = r.content
        times.append((time.perf_counter() - t0) * 1000)
        r.raise_for_status()
    return times, r


def env_for(data_dir: Path, url: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update({"PACS_FSYNC": "false", "PACS_LOG_LEVEL": "WARNING", "PACS_HTTP_WORKERS": "1"})
    if url:
        env["PACS_DATABASE_URL"] = url
    return env


def bench_metadata(workdir: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    series_dir = Path(args.series) if args.series else workdir / "ct"
    if not series_dir.is_dir() or not list(series_dir.glob("*.dcm")):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_ct_series.py"), "--out", str(series_dir),
                        "--slices", str(args.slices), "--size", "512"], check=True)
    files = sorted(series_dir.glob("*.dcm"))
    data_dir = workdir / "data-metadata"
    data_dir.mkdir()
    index = Index(f"sqlite:///{data_dir / 'index.sqlite'}", fsync=False)
    index.migrate()
    ingest = IngestService(FilesystemBlobStore(data_dir / "blobs", fsync=False), index)
    t0 = time.perf_counter()
    keys = None
    for path in files:
        keys = ingest.store(path.read_bytes(), Origin("import")).keys
    ingest.close()
    index.dispose()
    assert keys is not None
    print(f"metadata: stored {len(files)} instances in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    rows = []
    env = env_for(data_dir)
    with benchlib.pacs_server(data_dir, env) as srv:
        s = session_for(data_dir, env)
        base = f"http://127.0.0.1:{srv.http_port}/dicomweb/studies/{keys.study_instance_uid}"
        url = f"{base}/series/{keys.series_instance_uid}/metadata"
        times, resp = timed(s, url, args.runs, Accept="application/dicom+json")
        n = len(resp.json())
        rows.append((f"series metadata, {n} instances", f"{len(resp.content) / 1e6:.1f} MB",
                     f"{statistics.median(times):.1f}", f"{p95(times):.1f}"))
        frame_url = f"{base}/series/{keys.series_instance_uid}/instances/{keys.sop_instance_uid}/frames/1"
        times, resp = timed(s, frame_url, args.runs, Accept="multipart/related; type=application/octet-stream; transfer-syntax=*")
        rows.append(("one frame (byte range read)", f"{len(resp.content) / 1e3:.0f} KB",
                     f"{statistics.median(times):.1f}", f"{p95(times):.1f}"))
    return rows


def bench_qido(workdir: Path, args: argparse.Namespace) -> list[tuple[str, ...]]:
    url = f"sqlite:///{workdir / 'index-qido.sqlite'}"
    t0 = time.perf_counter()
    bench_find.fill(url, args.studies)
    print(f"qido: filled {args.studies} studies in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    data_dir = workdir / "data-qido"
    rows = []
    env = env_for(data_dir, url)
    with benchlib.pacs_server(data_dir, env) as srv:
        s = session_for(data_dir, env)
        for label, query in QIDO_QUERIES:
            qurl = f"http://127.0.0.1:{srv.http_port}/dicomweb/studies?{query}&{FIELDS}"
            times, resp = timed(s, qurl, args.runs, Accept="application/dicom+json")
            rows.append((f"QIDO {label}", f"{len(resp.json())} of {resp.headers.get('X-Total-Count')}",
                         f"{statistics.median(times):.1f}", f"{p95(times):.1f}"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--series", help="an existing folder of the CT series (else generated)")
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--only", choices=["metadata", "qido"])
    args = parser.parse_args()
    workdir = benchlib.fresh_workdir("minipacs-bench-dicomweb-")
    rows: list[tuple[str, ...]] = []
    if args.only in (None, "metadata"):
        rows += bench_metadata(workdir, args)
    if args.only in (None, "qido"):
        rows += bench_qido(workdir, args)
    print(f"\nDICOMweb over HTTP (SQLite index, 1 HTTP worker), {args.runs} runs each, ms")
    print("| request | answer | median | p95 |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
