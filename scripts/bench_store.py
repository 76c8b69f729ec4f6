#!/usr/bin/env python3
"""C-STORE ingest benchmark against any DICOM server, sent with DCMTK ``storescu``.

What it measures: the wall time for N concurrent ``/usr/bin/storescu`` processes (one
association each, each sending a disjoint contiguous share of a series) to get a response for
every instance; from that instances/s and MB/s (MB = 10^6 bytes of Part 10 files), the peak
resident memory of the server's process tree (psutil, every 50 ms, summed over the process and
its children), and the C-STORE status of every instance (parsed from ``storescu -v``). Each
configuration runs ``--repeat`` times; the table shows medians (peak memory: the largest seen, as PSS summed over the server's processes).

By default every run stores *new* instances: before each run (outside the timed section) the
series is copied with fresh Study/Series/SOP Instance UIDs, so a server never answers
"already have it" instead of ingesting. The client runs on the same machine as the server and
takes CPU from it; say so when quoting numbers.

Examples::

    # any running server (ours, Orthanc, dcm4chee, ...): just a DICOM target
    python scripts/bench_store.py --host 127.0.0.1 --port 11112 --aet MINIPACS \\
        --series /tmp/ct300 --generate --associations 1,4 --repeat 3 \\
        --server-process-pattern "pacs serve" --label "pacs fs" --json bench-results/store.jsonl

    # start `pacs serve` here on free ports, with SeaweedFS (S3) + embedded PostgreSQL
    python scripts/bench_store.py --start-server --backend s3-postgres --series /tmp/ct300 \\
        --server-env PACS_DICOM_WORKERS=2 --label "pacs s3+pg"

Exit status: 0 when every instance of every run got a success or warning status, 1 otherwise.

Comparing with Orthanc (Debian 12: ``apt-get install -y orthanc``, 1.10.1; the package's
service is not started in a container). Orthanc has no bind-address option and listens on all
interfaces, so run it and the benchmark in a private network namespace that only has loopback
(root: ``unshare -n``)::

    mkdir -p /tmp/orthanc-bench && cat > /tmp/orthanc-bench/orthanc.json <<'EOF'
    {"Name": "bench", "StorageDirectory": "/tmp/orthanc-bench/db",
     "IndexDirectory": "/tmp/orthanc-bench/db", "DicomAet": "ORTHANC", "DicomPort": 4242,
     "HttpPort": 8042, "RemoteAccessAllowed": false, "DicomCheckCalledAet": false,
     "Plugins": [], "StorageCompression": false, "HttpServerEnabled": true}
    EOF
    unshare -n sh -c 'ip link set lo up
      TCP_NODELAY=1 Orthanc /tmp/orthanc-bench/orthanc.json >/tmp/orthanc-bench/log 2>&1 &
      pid=$!
      python scripts/bench_store.py --port 4242 --aet ORTHANC --series /tmp/ct300 \\
          --server-pid $pid --label "Orthanc 1.10 sqlite" --json bench-results/store.jsonl
      kill $pid'

``TCP_NODELAY=1`` matters: Debian's Orthanc receives through DCMTK, which leaves Nagle's
algorithm on unless that variable is set; its small C-STORE responses then wait for delayed
ACKs (measured here: 16 inst/s over one association without it, 52 with it, same files).
The script waits for the first C-ECHO, so no sleep is needed after starting a server.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

try:
    from scripts import benchlib
except ImportError:  # run as `python scripts/bench_store.py`: scripts/ is sys.path[0]
    import benchlib  # type: ignore[no-redef]

STORESCU = benchlib.STORESCU
SCRIPTS = Path(__file__).resolve().parent

# storescu -v prints one of these per instance, e.g. "(Success)",
# "(Warning: CoercionOfDataElements)", "(Refused: OutOfResources)" (PS3.4 Annex B.2.3).
_RESPONSE = re.compile(r"Received Store Response \(([^)]*)\)")


@dataclass
class RunResult:
    """One timed send of the whole series over ``associations`` associations."""

    associations: int
    files: int
    bytes: int
    ok: int
    failed: int
    no_response: int
    wall_s: float
    process_wall_s: list[float]
    exit_codes: list[int]
    rss_before: dict[str, int] = field(default_factory=dict)
    rss_peak: dict[str, int] = field(default_factory=dict)
    rss_samples: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def instances_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.wall_s if self.wall_s > 0 else 0.0


# --- series preparation (never timed) -------------------------------------------------------


def list_series(folder: Path) -> list[Path]:
    """Every ``*.dcm`` under ``folder``, sorted (the same order on every run)."""
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


def generate_series(folder: Path, extra: Sequence[str]) -> None:
    script = SCRIPTS / "make_ct_series.py"
    if not script.exists():
        sys.exit(f"--generate: {script} does not exist (yet); pass --series with existing files")
    cmd = [sys.executable, str(script), "--out", str(folder), *extra]
    print(f"generating series: {shlex.join(cmd)}", file=sys.stderr)
    subprocess.run(cmd, check=True)


def copy_with_fresh_uids(files: Sequence[Path], out_dir: Path) -> list[Path]:
    """Copies of ``files`` with new Study, Series and SOP Instance UIDs (structure kept).

    Each original study / series maps to one new UID, so a 300-slice series stays one series.
    Other references (Frame of Reference, ReferencedSOPInstanceUID) are left as they are.
    """
    from pydicom import dcmread
    from pydicom.uid import generate_uid

    out_dir.mkdir(parents=True, exist_ok=True)
    studies: dict[str, str] = {}
    series: dict[str, str] = {}
    written = []
    for i, path in enumerate(files):
        ds = dcmread(path)
        old_study = str(ds.get("StudyInstanceUID", ""))
        old_series = str(ds.get("SeriesInstanceUID", ""))
        if old_study not in studies:
            studies[old_study] = generate_uid()
        if old_series not in series:
            series[old_series] = generate_uid()
        ds.StudyInstanceUID = studies[old_study]
        ds.SeriesInstanceUID = series[old_series]
        sop = generate_uid()
        ds.SOPInstanceUID = sop
        if getattr(ds, "file_meta", None) is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = sop  # (0002,0003) must equal (0008,0018)
        out = out_dir / f"{i:06d}.dcm"
        ds.save_as(out)
        written.append(out)
    return written


def split_shares(files: Sequence[Path], n: int) -> list[list[Path]]:
    """``n`` disjoint contiguous shares, sizes differing by at most one."""
    n = max(1, min(n, len(files)))
    q, r = divmod(len(files), n)
    shares, start = [], 0
    for i in range(n):
        size = q + (1 if i < r else 0)
        shares.append(list(files[start:start + size]))
        start += size
    return shares


# --- one timed run --------------------------------------------------------------------------


def parse_storescu_log(text: str) -> tuple[int, int, list[str]]:
    """(successes incl. warnings, failures, notable lines) from ``storescu -v`` output."""
    ok = failed = 0
    problems = []
    for line in text.splitlines():
        m = _RESPONSE.search(line)
        if m:
            status = m.group(1)
            if status.startswith(("Success", "Warning")):
                ok += 1
            else:
                failed += 1
                problems.append(line.strip())
        elif line.startswith(("E:", "F:", "W:")):
            problems.append(line.strip())
    return ok, failed, problems


def run_once(shares: list[list[Path]], args: argparse.Namespace,
             rss_groups: dict[str, list[int]], log_dir: Path) -> RunResult:
    """Send every share over its own association at once; wall time = first start to last exit."""
    base = [STORESCU, "-v", "-nh", "-aet", args.calling_aet, "-aec", args.aet,
            *shlex.split(args.storescu_args), args.host, str(args.port)]
    logs = [log_dir / f"storescu-{i}.log" for i in range(len(shares))]
    ends: list[float] = [0.0] * len(shares)
    procs: list[subprocess.Popen[bytes]] = []

    def waiter(i: int) -> None:
        try:
            procs[i].wait(args.timeout)
        except subprocess.TimeoutExpired:
            procs[i].kill()
            procs[i].wait()
        ends[i] = time.perf_counter()

    with benchlib.RssSampler(rss_groups, interval=0.05) as sampler:
        handles = [open(p, "wb") for p in logs]
        try:
            t0 = time.perf_counter()
            for share, out in zip(shares, handles):
                procs.append(subprocess.Popen([*base, *map(str, share)], stdout=out,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
            threads = [threading.Thread(target=waiter, args=(i,), daemon=True)
                       for i in range(len(procs))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        except BaseException:  # Ctrl-C / SIGTERM: no storescu outlives the benchmark
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
            raise
        finally:
            for h in handles:
                h.close()
    ok = failed = 0
    problems: list[str] = []
    for p in logs:
        o, f, pr = parse_storescu_log(p.read_text(errors="replace"))
        ok, failed = ok + o, failed + f
        problems += pr
    files = sum(len(s) for s in shares)
    return RunResult(
        associations=len(shares), files=files,
        bytes=sum(f.stat().st_size for s in shares for f in s),
        ok=ok, failed=failed, no_response=files - ok - failed,
        wall_s=max(ends) - t0, process_wall_s=[e - t0 for e in ends],
        exit_codes=[p.returncode for p in procs],
        rss_before=sampler.before, rss_peak=dict(sampler.peak), rss_samples=sampler.samples,
        problems=problems[:20],
    )


# --- target: external or started here -------------------------------------------------------


@dataclass
class Target:
    host: str
    port: int
    aet: str
    rss_groups: dict[str, list[int]]
    description: dict[str, object]


@contextlib.contextmanager
def external_target(args: argparse.Namespace) -> Iterator[Target]:
    groups: dict[str, list[int]] = {}
    if args.server_pid:
        groups["server"] = [args.server_pid]
    elif args.server_process_pattern:
        procs = benchlib.find_processes(args.server_process_pattern)
        if not procs:
            sys.exit(f"no process matches --server-process-pattern {args.server_process_pattern!r}")
        groups["server"] = [p.pid for p in procs]
        print(f"sampling RSS of {len(procs)} process tree(s): "
              + ", ".join(f"{p.pid} {p.name()}" for p in procs), file=sys.stderr)
    benchlib.wait_for_echo(args.host, args.port, args.aet, timeout=args.server_timeout)
    yield Target(args.host, args.port, args.aet, groups,
                 {"mode": "external", "server_pid": args.server_pid,
                  "pattern": args.server_process_pattern})


@contextlib.contextmanager
def started_target(args: argparse.Namespace, workdir: Path) -> Iterator[Target]:
    """Start backends and ``pacs serve`` in ``workdir``; stop all of them afterwards."""
    env = dict(os.environ)
    backend_pids: list[int] = []
    with contextlib.ExitStack() as stack:
        if args.backend == "s3-postgres":
            print("starting embedded PostgreSQL and SeaweedFS ...", file=sys.stderr)
            pg = stack.enter_context(benchlib.embedded_postgres(workdir / "pg"))
            s3 = stack.enter_context(benchlib.seaweedfs(workdir / "s3"))
            backend_pids = [pg.pid, s3.pid]
            env.update({
                "PACS_DATABASE_URL": pg.url,
                "PACS_BLOB_BACKEND": "minio",
                "PACS_MINIO_ENDPOINT": s3.endpoint,
                "PACS_MINIO_ACCESS_KEY": s3.access_key,
                "PACS_MINIO_SECRET_KEY": s3.secret_key,
                "PACS_MINIO_BUCKET": s3.bucket,
                "PACS_MINIO_REGION": s3.region,
                "PACS_MINIO_SECURE": "false",
            })
        else:  # fs-sqlite: the defaults, made explicit so a stray PACS_* in the shell cannot leak
            env.update({"PACS_DATABASE_URL": "", "PACS_BLOB_BACKEND": "filesystem"})
        for item in args.server_env:
            key, _, value = item.partition("=")
            env[key] = value
        print("starting pacs serve ...", file=sys.stderr)
        server = stack.enter_context(benchlib.pacs_server(
            workdir / "data", env, ae_title=args.aet, timeout=args.server_timeout,
            extra_args=shlex.split(args.server_args)))
        groups = {"server": [server.pid]}
        if backend_pids:
            groups["backend"] = backend_pids
        print(f"pacs serve pid {server.pid} on {server.host}:{server.dicom_port} "
              f"(log {server.log})", file=sys.stderr)
        yield Target(server.host, server.dicom_port, server.ae_title, groups,
                     {"mode": "start-server", "backend": args.backend,
                      "server_env": args.server_env, "server_args": args.server_args})


# --- reporting ------------------------------------------------------------------------------


def summarize(label: str, runs: list[RunResult]) -> dict[str, object]:
    first = runs[0]
    peaks: dict[str, float] = {}
    for name in first.rss_peak:
        peaks[name] = max(r.rss_peak.get(name, 0) for r in runs) / 1e6
    return {
        "label": label,
        "associations": first.associations,
        "files": first.files,
        "mb": first.bytes / 1e6,
        "runs": len(runs),
        "wall_s_median": statistics.median(r.wall_s for r in runs),
        "wall_s_min": min(r.wall_s for r in runs),
        "wall_s_max": max(r.wall_s for r in runs),
        "instances_per_s_median": statistics.median(r.instances_per_s for r in runs),
        "mb_per_s_median": statistics.median(r.mb_per_s for r in runs),
        "failed_total": sum(r.failed + r.no_response for r in runs),
        "peak_rss_mb": peaks,
    }


def markdown_table(rows: list[dict[str, object]]) -> str:
    groups = sorted({g for r in rows for g in r["peak_rss_mb"]})  # type: ignore[union-attr]
    head = ["label", "assoc", "instances", "MB", "runs", "wall s (median, min-max)",
            "inst/s", "MB/s", "failed"] + [f"peak memory (PSS) {g} MB" for g in groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        peaks = r["peak_rss_mb"]
        cells = [
            str(r["label"]), str(r["associations"]), str(r["files"]), f"{r['mb']:.1f}",
            str(r["runs"]),
            f"{r['wall_s_median']:.2f} ({r['wall_s_min']:.2f}-{r['wall_s_max']:.2f})",
            f"{r['instances_per_s_median']:.0f}", f"{r['mb_per_s_median']:.1f}",
            str(r["failed_total"]),
        ] + [f"{peaks[g]:.0f}" if g in peaks else "-" for g in groups]  # type: ignore[operator]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def storescu_version() -> str:
    try:
        out = subprocess.run([STORESCU, "--version"], capture_output=True, text=True).stdout
    except OSError:
        return "missing"
    m = re.search(r"storescu v(\S+)", out)
    return m.group(1) if m else out.strip()[:80]


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See the module docstring for Orthanc and examples.")
    t = p.add_argument_group("target")
    t.add_argument("--host", default="127.0.0.1")
    t.add_argument("--port", type=int, default=11112)
    t.add_argument("--aet", default="MINIPACS", help="called AE title (default MINIPACS)")
    t.add_argument("--calling-aet", default="BENCH")
    s = p.add_argument_group("data")
    s.add_argument("--series", type=Path, required=True, help="folder of .dcm files (recursive)")
    s.add_argument("--generate", action="store_true",
                   help="if --series does not exist, run scripts/make_ct_series.py --out DIR")
    s.add_argument("--generate-args", default="", help="extra arguments for make_ct_series.py")
    s.add_argument("--fresh-uids", action=argparse.BooleanOptionalAction, default=True,
                   help="store new instances every run: copy with new Study/Series/SOP UIDs "
                        "before each run, untimed (default on)")
    r = p.add_argument_group("runs")
    r.add_argument("--associations", default="1,4",
                   help="comma list; N = N concurrent storescu processes, one share each")
    r.add_argument("--repeat", type=int, default=3, help="timed runs per setting (median)")
    r.add_argument("--warmup", type=int, default=0, help="untimed runs first, per setting")
    r.add_argument("--storescu-args", default="",
                   help="extra storescu flags, e.g. '-xs' for JPEG Lossless files; the default "
                        "proposes explicit VR LE, explicit VR BE and implicit VR LE")
    r.add_argument("--timeout", type=float, default=900, help="seconds per storescu process")
    m = p.add_argument_group("memory of the server (peak RSS, process + children)")
    m.add_argument("--server-pid", type=int)
    m.add_argument("--server-process-pattern", help="substring of the server's command line")
    o = p.add_argument_group("start our server here")
    o.add_argument("--start-server", action="store_true",
                   help="run `pacs serve` on free 127.0.0.1 ports (ignores --host/--port)")
    o.add_argument("--backend", choices=("fs-sqlite", "s3-postgres"), default="fs-sqlite",
                   help="fs-sqlite: filesystem blobs + SQLite; s3-postgres: SeaweedFS + "
                        "embedded PostgreSQL, both started here")
    o.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for pacs serve, e.g. PACS_DICOM_WORKERS=2")
    o.add_argument("--server-args", default="",
                   help="extra arguments for pacs serve, e.g. '--workers 1'")
    o.add_argument("--server-timeout", type=float, default=60,
                   help="seconds to wait for the first C-ECHO answer")
    o.add_argument("--keep-workdir", action="store_true", help="keep server data and logs")
    out = p.add_argument_group("output")
    out.add_argument("--label", default="", help="name of this setup in the table and JSON")
    out.add_argument("--json", type=Path, help="append one JSON line per setting to this file")
    args = p.parse_args(argv)
    try:
        args.assoc_list = [int(x) for x in args.associations.split(",") if x.strip()]
    except ValueError:
        p.error("--associations must be a comma list of integers, e.g. 1,4")
    if not args.assoc_list or min(args.assoc_list) < 1 or args.repeat < 1:
        p.error("--associations values and --repeat must be >= 1")
    if args.server_pid and args.server_process_pattern:
        p.error("give --server-pid or --server-process-pattern, not both")
    for item in args.server_env:
        if "=" not in item:
            p.error(f"--server-env {item!r}: expected KEY=VALUE")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # Default SIGTERM kills Python without unwinding: the servers started here would be orphaned.
    sys.exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if not os.access(STORESCU, os.X_OK):
        sys.exit(f"{STORESCU} not found: apt-get install -y dcmtk")
    if not args.series.exists():
        if not args.generate:
            sys.exit(f"{args.series} does not exist (add --generate to create it)")
        generate_series(args.series, shlex.split(args.generate_args))
    originals = list_series(args.series)
    if not originals:
        sys.exit(f"no .dcm files under {args.series}")
    series_bytes = sum(f.stat().st_size for f in originals)
    label = args.label or ("pacs " + args.backend if args.start_server else f"{args.aet}")

    workdir = benchlib.fresh_workdir()
    rows: list[dict[str, object]] = []
    all_ok = True
    try:
        with contextlib.ExitStack() as stack:
            if args.start_server:
                target = stack.enter_context(started_target(args, workdir))
            else:
                target = stack.enter_context(external_target(args))
            args.host, args.port, args.aet = target.host, target.port, target.aet
            print(f"{len(originals)} files, {series_bytes / 1e6:.1f} MB"
                  f" -> {args.aet}@{args.host}:{args.port}", file=sys.stderr)
            for n in args.assoc_list:
                runs: list[RunResult] = []
                for i in range(args.warmup + args.repeat):
                    run_dir = workdir / f"run-{n}-{i}"
                    run_dir.mkdir()
                    if args.fresh_uids:
                        t = time.perf_counter()
                        files = copy_with_fresh_uids(originals, run_dir / "series")
                        prep = time.perf_counter() - t
                    else:
                        files, prep = originals, 0.0
                    result = run_once(split_shares(files, n), args, target.rss_groups, run_dir)
                    warm = i < args.warmup
                    rss = ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in result.rss_peak.items())
                    print(f"  {'warmup' if warm else 'run'} {i + 1 - (0 if warm else args.warmup)}"
                          f" assoc={n}: {result.ok}/{result.files} ok in {result.wall_s:.2f} s"
                          f" = {result.instances_per_s:.0f} inst/s, {result.mb_per_s:.1f} MB/s"
                          f"{'; peak ' + rss if rss else ''} (UID rewrite {prep:.1f} s, untimed)",
                          file=sys.stderr)
                    for line in result.problems[:5]:
                        print(f"    {line}", file=sys.stderr)
                    if result.failed or result.no_response:
                        all_ok = False
                    if not warm:
                        runs.append(result)
                    shutil.rmtree(run_dir / "series", ignore_errors=True)
                row = summarize(label, runs)
                rows.append(row)
                if args.json:
                    write_json(args, target, row, runs, len(originals), series_bytes)
    finally:
        if args.keep_workdir:
            print(f"work dir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(markdown_table(rows))
    print()
    print(f"storescu {storescu_version()} -> {args.aet}@{args.host}:{args.port}; "
          f"{os.cpu_count()} CPUs shared by client and server; MB = 10^6 bytes; "
          f"fresh UIDs {'on' if args.fresh_uids else 'off'}")
    return 0 if all_ok else 1


def write_json(args: argparse.Namespace, target: Target, row: dict[str, object],
               runs: list[RunResult], n_files: int, n_bytes: int) -> None:
    record = {
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **row,
        "target": {"host": args.host, "port": args.port, "aet": args.aet, **target.description},
        "series": {"dir": str(args.series), "files": n_files, "bytes": n_bytes},
        "fresh_uids": args.fresh_uids,
        "storescu": storescu_version(),
        "storescu_args": args.storescu_args,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "run_details": [asdict(r) for r in runs],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    sys.exit(main())
