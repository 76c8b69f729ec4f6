#!/usr/bin/env python3
"""C-MOVE (and C-GET) retrieve benchmark: ``pacs serve`` sending a study to DCMTK.

What it measures: the wall time of one ``/usr/bin/movescu -S`` process asking ``pacs serve``
to move a whole study (STUDY level) to a DCMTK ``/usr/bin/storescp`` that writes every
instance to disk, from process start to exit; from that instances/s and MB/s (MB = 10^6
bytes of the Part 10 files as stored). With ``--get`` the same study is also pulled with
``/usr/bin/getscu`` (C-GET: the instances come back on the requesting association).
Median of ``--repeat`` runs per configuration.

Set up here, untimed: the backends (``--backend fs-sqlite``: filesystem blobs + SQLite;
``s3-postgres``: SeaweedFS + embedded PostgreSQL, as ``scripts/bench_store.py``), ``pacs
serve`` on free ports, the series sent once with ``storescu`` (the normal C-STORE path), and
``storescp`` on a free port registered as the destination with ``pacs ae add``. Between
runs the received files are deleted (untimed).

``storescp``, ``movescu`` and ``getscu`` run with ``TCP_NODELAY=1`` in their environment
(DCMTK leaves Nagle on otherwise, and its small C-STORE responses would wait for delayed
ACKs whoever the sender is). ``--storescp-pdu`` lists the maximum PDU sizes the
destination advertises: DCMTK's default is 16384 bytes; ``131072`` is DCMTK's upper limit,
what a workstation tuned for throughput would set.

A run counts as failed unless the final status is Success and every instance arrived; the
table gives medians of the successful runs and counts the failed ones. (Before the
sub-operations were parked, pynetdicom's reactor sometimes took a C-STORE response: that
run then waits out the server's network timeout. To compare with such a version, pass
``--server-env PACS_NETWORK_TIMEOUT=10`` so that a stuck run cannot overlap the next.)

The data is synthetic (``scripts/make_ct_series.py``: a 300-slice 512x512 CT, 158 MB);
client, server and destination share the machine's cores: say so when quoting figures.

Example::

    .venv/bin/python scripts/bench_move.py --series /tmp/ct300 --generate --repeat 3 \\
        --storescp-pdu 16384,131072 --get
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_move.py`: scripts/ is sys.path[0]
    import benchlib  # type: ignore[no-redef]

MOVESCU = "/usr/bin/movescu"
GETSCU = "/usr/bin/getscu"
STORESCP = "/usr/bin/storescp"
STORESCU = benchlib.STORESCU
DEST_AET = "BENCHDEST"

# movescu/getscu -v end with e.g. "Received Final Move Response (Success)" and print the
# sub-operation counts of the last response.
_FINAL = re.compile(r"Received (?:Final Move|C-GET) Response \((Success|Warning[^)]*|Failure[^)]*|Refused[^)]*)\)")


@dataclass
class Run:
    kind: str          # "C-MOVE" or "C-GET"
    pdu: str           # what the destination advertises ("-" for C-GET)
    instances: int     # received
    bytes: int
    wall_s: float
    ok: bool           # final status Success and every instance received

    @property
    def per_s(self) -> float:
        return self.instances / self.wall_s

    @property
    def mb_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s


def series_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def study_uid(files: Sequence[Path]) -> str:
    from pydicom import dcmread

    uids = {str(dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files}
    if len(uids) != 1:
        raise SystemExit(f"expected one study in the series folder, found {len(uids)}")
    return uids.pop()


@contextlib.contextmanager
def backend_env(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    """The environment ``pacs`` needs for ``backend``, with its servers running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update({"PACS_LOG_LEVEL": "WARNING"})
    with contextlib.ExitStack() as stack:
        if backend == "s3-postgres":
            print("starting embedded PostgreSQL and SeaweedFS ...", file=sys.stderr)
            pg = stack.enter_context(benchlib.embedded_postgres(workdir / "pg"))
            s3 = stack.enter_context(benchlib.seaweedfs(workdir / "s3"))
            env.update({
                "PACS_DATABASE_URL": pg.url, "PACS_BLOB_BACKEND": "minio",
                "PACS_MINIO_ENDPOINT": s3.endpoint, "PACS_MINIO_ACCESS_KEY": s3.access_key,
                "PACS_MINIO_SECRET_KEY": s3.secret_key, "PACS_MINIO_BUCKET": s3.bucket,
                "PACS_MINIO_REGION": s3.region, "PACS_MINIO_SECURE": "false",
            })
        else:
            env.update({"PACS_DATABASE_URL": "", "PACS_BLOB_BACKEND": "filesystem"})
        yield env


@contextlib.contextmanager
def storescp(folder: Path, pdu: int, extra: Sequence[str]) -> Iterator[int]:
    """DCMTK ``storescp`` writing into ``folder``; yields its port once it answers C-ECHO."""
    folder.mkdir(parents=True, exist_ok=True)
    port = benchlib.free_port()
    log = folder.parent / f"storescp-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [STORESCP, "-aet", DEST_AET, "-od", str(folder), "--max-pdu", str(pdu), *extra, str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
    try:
        benchlib.wait_for_echo("127.0.0.1", port, DEST_AET, 20, proc=proc, log=log)  # type: ignore[arg-type]
        yield port
    finally:
        benchlib.stop_process(proc)  # type: ignore[arg-type]


def pacs_cli(env: dict[str, str], data_dir: Path, *args: str) -> None:
    out = subprocess.run([benchlib.pacs_command(), *args, "--data-dir", str(data_dir)],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"pacs {' '.join(args)} failed:\n{out.stdout}{out.stderr}")


def load(server: benchlib.PacsServer, folder: Path) -> None:
    """Store the series through C-STORE (untimed)."""
    out = subprocess.run(
        [STORESCU, "-aet", "BENCH", "-aec", server.ae_title, "+sd", "+r", "+sp", "*.dcm",
         server.host, str(server.dicom_port), str(folder)],
        capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"storescu failed:\n{out.stdout}{out.stderr}")


def timed(argv: list[str], timeout: float) -> tuple[float, bool, str]:
    """Run a retrieve; (wall time, final status Success, output).

    ``TCP_NODELAY=1`` for the DCMTK client too: getscu is the C-STORE SCP of a C-GET, and
    with Nagle on its C-STORE responses wait for delayed ACKs (measured here: 22 instead of
    69 instances/s against the same server).
    """
    t0 = time.perf_counter()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                             timeout=timeout, env={**os.environ, "TCP_NODELAY": "1"})
    except subprocess.TimeoutExpired as exc:
        return time.perf_counter() - t0, False, f"timed out after {timeout:.0f} s: {exc.stderr!r}"[-3000:]
    elapsed = time.perf_counter() - t0
    text = out.stdout + out.stderr
    final = None
    for final in _FINAL.finditer(text):  # the last one is the final response
        pass
    ok = out.returncode == 0 and final is not None and final.group(1) == "Success"
    return elapsed, ok, text


def count_received(folder: Path) -> int:
    return sum(1 for f in folder.iterdir() if f.is_file())


def record(runs: list[Run], kind: str, pdu: str, argv: list[str], folder: Path, files: int,
           total: int, args: argparse.Namespace) -> None:
    """``--repeat`` timed runs after one untimed warm-up; a failed run is kept and reported."""
    for i in range(args.repeat + 1):
        clear(folder)
        elapsed, ok, text = timed(argv, args.timeout)
        n = count_received(folder)
        ok = ok and n == files
        if not ok:
            print(f"{kind} run {i} FAILED ({n}/{files} received, {elapsed:.1f} s):\n{text[-1500:]}",
                  file=sys.stderr)
        if i:
            runs.append(Run(kind, pdu, n, total, elapsed, ok))
            print(f"{kind}, destination max PDU {pdu}: {n / elapsed:.1f} inst/s ({elapsed:.2f} s)"
                  + ("" if ok else " FAILED"), file=sys.stderr)


def clear(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            f.unlink()


def bench(args: argparse.Namespace, workdir: Path) -> list[Run]:
    files = series_files(args.series)
    if not files:
        raise SystemExit(f"no *.dcm under {args.series} (use --generate)")
    total = sum(f.stat().st_size for f in files)
    study = study_uid(files)
    runs: list[Run] = []
    with backend_env(args.backend, workdir) as env:
        data_dir = workdir / "data"
        env = {**env, **dict(item.partition("=")[::2] for item in args.server_env)}
        with benchlib.pacs_server(data_dir, env, ae_title="MINIPACS") as server:
            print(f"pacs serve pid {server.pid} on port {server.dicom_port} (log {server.log}); "
                  f"storing {len(files)} instances ...", file=sys.stderr)
            load(server, args.series)
            for pdu in args.storescp_pdu:
                received = workdir / f"received-{pdu}"
                with storescp(received, pdu, args.storescp_args) as port:
                    name = f"dest{pdu}"
                    pacs_cli(env, data_dir, "ae", "add", name, DEST_AET, "127.0.0.1", str(port))
                    argv = [MOVESCU, "-v", "-S", "-aet", "BENCH", "-aec", server.ae_title,
                            "-aem", DEST_AET, "-k", "QueryRetrieveLevel=STUDY",
                            "-k", f"StudyInstanceUID={study}", server.host, str(server.dicom_port)]
                    record(runs, "C-MOVE", str(pdu), argv, received, len(files), total, args)
                    pacs_cli(env, data_dir, "ae", "remove", name)
            if args.get:
                folder = workdir / "get"
                folder.mkdir()
                argv = [GETSCU, "-v", "-S", "-aet", "BENCH", "-aec", server.ae_title, "-od", str(folder),
                        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                        server.host, str(server.dicom_port)]
                record(runs, "C-GET", "-", argv, folder, len(files), total, args)
    return runs


def table(runs: list[Run], backend: str) -> str:
    """Medians over the successful runs; failed runs are counted, not averaged in."""
    lines = ["| backend | retrieve | destination max PDU | inst/s (median) | MB/s | runs (inst/s) | failed |",
             "|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r.kind, r.pdu) for r in runs))
    for kind, pdu in keys:
        group = [r for r in runs if (r.kind, r.pdu) == (kind, pdu)]
        good = [r for r in group if r.ok] or group
        med = statistics.median(r.per_s for r in good)
        mbs = statistics.median(r.mb_s for r in good)
        each = ", ".join(f"{r.per_s:.0f}" + ("" if r.ok else "!") for r in group)
        failed = sum(not r.ok for r in group)
        lines.append(f"| {backend} | {kind} | {pdu} | {med:.1f} | {mbs:.1f} | {each} | {failed} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=Path, required=True, help="folder of one study's *.dcm files")
    p.add_argument("--generate", action="store_true",
                   help="create the series with scripts/make_ct_series.py if the folder is empty")
    p.add_argument("--backend", choices=("fs-sqlite", "s3-postgres"), default="fs-sqlite")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--storescp-pdu", default="16384",
                   help="comma-separated max PDU sizes for storescp (DCMTK: 4096..131072)")
    p.add_argument("--storescp-args", default="", help="extra storescp arguments, e.g. '--ignore'")
    p.add_argument("--get", action="store_true", help="also time C-GET with getscu")
    p.add_argument("--timeout", type=float, default=300,
                   help="seconds before a run counts as failed (keep it above the server's "
                        "network timeout, PACS_NETWORK_TIMEOUT, so a stuck run cannot overlap the next)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for pacs serve, e.g. PACS_DICOM_WORKERS=1")
    args = p.parse_args(argv)
    args.storescp_pdu = [int(x) for x in args.storescp_pdu.split(",") if x]
    args.storescp_args = args.storescp_args.split()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.generate and not series_files(args.series):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_ct_series.py"),
                        "--out", str(args.series)], check=True)
    for tool in (MOVESCU, GETSCU, STORESCP, STORESCU):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} missing: apt-get install -y dcmtk")
    workdir = benchlib.fresh_workdir("minipacs-bench-move-")
    try:
        runs = bench(args, workdir)
    except Exception:
        print(f"failed; logs kept in {workdir}", file=sys.stderr)
        raise
    if all(r.ok for r in runs):
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"some runs failed; logs kept in {workdir}", file=sys.stderr)
    print(f"\nSTUDY-level retrieve of {args.series} ({len(series_files(args.series))} instances), "
          f"median of {args.repeat}, client process start included; '!' marks a failed run\n")
    print(table(runs, args.backend))
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
