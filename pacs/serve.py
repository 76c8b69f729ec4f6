"""``pacs serve``: one supervisor process (HTTP + start-up work) and N DICOM receiver processes.

Why processes: one Python process has one GIL, and receiving DICOM is CPU-bound Python
(PDU decoding, parsing, hashing). Receivers accept on one shared listening socket;
everything durable is in the index database and the blob store, so they need no
coordination beyond what the database gives (and several nodes can run side by side).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import multiprocessing as mp
import signal
import socket
import sys
import threading
import time
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

from pacs.config import Settings

log = logging.getLogger(__name__)

#: Seconds to let running associations finish after SIGTERM.
STOP_GRACE = 30.0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s",
    )
    # Alembic narrates every plugin at INFO; only its problems matter at start-up.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the supervisor dies (even by kill -9)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def dicom_worker(settings: Settings, listener: socket.socket, ready: MpEvent) -> None:
    """Body of one receiver process: open the services, listen until SIGTERM, drain."""
    _die_with_parent()
    stopping: list[int] = []
    # Only a plain flag in the handler: a lock taken in a signal handler can deadlock
    # with the same lock held by the code it interrupted.
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    setup_logging(settings.log_level)
    from pacs.scp.server import start_scp, stop_scp
    from pacs.services import build_services

    services = build_services(settings)
    server = start_scp(settings, services.ingest, listener)
    ready.set()
    while not stopping:
        time.sleep(0.2)
    cut = stop_scp(server, STOP_GRACE)
    if cut:
        log.warning("aborted %d association(s) still running after %.0f s", cut, STOP_GRACE)
    services.close()


class Supervisor:
    """Starts and watches the receivers and the HTTP server; stops them on SIGTERM/SIGINT."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The first receivers are forked before this process starts any thread: they share
        # its imported modules page for page (copy-on-write), so N receivers cost far less
        # memory than N fresh interpreters. A receiver restarted later, when the HTTP thread
        # runs, is spawned fresh instead (forking a threaded process can copy a held lock).
        self.fork_ctx = mp.get_context("fork")
        self.ctx = mp.get_context("spawn")
        self.stopping: list[int] = []
        self.workers: list[Any] = []
        self.dicom_port = 0
        self.listener: socket.socket | None = None
        self.http_port = 0

    def _spawn(self, n: int, ctx: Any = None) -> Any:
        ctx = ctx or self.ctx
        ready = ctx.Event()
        proc = ctx.Process(
            target=dicom_worker, args=(self.settings, self.listener, ready),
            name=f"dicom-{n}", daemon=False,
        )
        proc.start()
        if not ready.wait(120):
            proc.kill()
            raise RuntimeError(f"DICOM receiver {n} did not start (see the log above)")
        if not proc.is_alive():
            raise RuntimeError(f"DICOM receiver {n} exited at start (exit code {proc.exitcode})")
        return proc

    def run(self) -> int:
        s = self.settings
        from pacs.services import build_services

        services = build_services(s, migrate=True)
        if s.load_samples and services.index.counts().instances == 0:
            self._load_samples(services)

        from pacs.scp.server import make_listener

        self.listener = make_listener(s.host, s.dicom_port)
        self.dicom_port = self.listener.getsockname()[1]
        n = s.resolved_dicom_workers
        # Nothing of ours may be running in a thread or hold a connection across fork().
        # pacs.scp.server is imported above (make_listener): every receiver shares it.
        services.close()

        gc.collect()
        gc.freeze()  # keep the collector from touching (and so copying) the shared objects
        use_fork = threading.active_count() == 1
        for i in range(n):
            self.workers.append(self._spawn(i, self.fork_ctx if use_fork else self.ctx))
        gc.unfreeze()
        services = build_services(s)

        from werkzeug.serving import make_server

        from pacs.web import create_app

        app = create_app(s, services.index, services.blobs, dicom_port=self.dicom_port)
        http = make_server(s.host, s.http_port, app, threaded=True)
        self.http_port = http.server_port
        http_thread = threading.Thread(target=http.serve_forever, name="http", daemon=True)
        http_thread.start()

        shown = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
        print(f"pacs: DICOM listening on {s.host}:{self.dicom_port} AE title {s.ae_title} "
              f"({n} receiver process{'es' if n > 1 else ''})", flush=True)
        print(f"pacs: HTTP listening on http://{shown}:{self.http_port}/", flush=True)
        print(f"pacs: index {services.index}, blobs {services.blobs}", flush=True)
        print("pacs: ready (SIGTERM or Ctrl-C to stop)", flush=True)

        def on_signal(signum: int, _frame: Any) -> None:
            self.stopping.append(signum)  # a plain flag: no locks inside a signal handler

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        while not self.stopping:
            time.sleep(0.25)
            for i, proc in enumerate(self.workers):
                if not proc.is_alive() and not self.stopping:
                    log.error("DICOM receiver %d exited (code %s); restarting it", i, proc.exitcode)
                    try:
                        self.workers[i] = self._spawn(i)
                    except RuntimeError as exc:
                        log.error("%s", exc)

        print("pacs: stopping: finishing running associations", flush=True)
        for proc in self.workers:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the receiver stops accepting and drains
        http.shutdown()
        for proc in self.workers:
            proc.join(STOP_GRACE + 10)
            if proc.is_alive():
                proc.kill()
        self.listener.close()
        services.close()
        print("pacs: stopped", flush=True)
        return 0

    def _load_samples(self, services: Any) -> None:
        from pacs.tools import import_paths

        folder = self.settings.resolved_samples_dir
        if not folder.is_dir():
            log.warning("sample folder %s not found; starting empty", folder)
            return
        t0 = time.monotonic()
        report = import_paths(services.ingest, [folder])
        print(f"pacs: loaded sample studies from {folder}: {report.stored} instances stored, "
              f"{len(report.rejected)} rejected ({time.monotonic() - t0:.1f} s)", flush=True)


def serve(settings: Settings) -> int:
    setup_logging(settings.log_level)
    try:
        return Supervisor(settings).run()
    except OSError as exc:
        print(f"pacs: cannot start: {exc}", file=sys.stderr)
        return 1
