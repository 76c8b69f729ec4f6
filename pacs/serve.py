"""``pacs serve``: one supervisor process (HTTP + start-up work) and N DICOM receiver processes.

Why processes: one Python process has one GIL, and receiving DICOM is CPU-bound Python
(PDU decoding, parsing, hashing). Receivers accept on one shared listening socket;
everything durable is in the index database and the blob store, so they need no
coordination beyond what the database gives (and several nodes can run side by side).
"""

from __future__ import annotations

import ctypes
import dataclasses
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


#: Longest a busy HTTP worker leaves a new connection to a less busy sibling (seconds).
ACCEPT_DEFER = 0.005


def balance_accepts(server: Any, loads: Any, slot: int) -> None:
    """Make a waitress server on a listening socket shared by sibling processes take new
    connections only when it has no more open connections than the least busy sibling.

    Why: every worker polls the one listening socket and the first awake accepts, so four
    connections opened at once often land three on one process and one on the other; the
    three then share one interpreter lock while the other core idles. ``loads`` is an
    integer array in shared memory, one slot per worker, holding its open connections. A
    worker with more than a sibling lets a pending connection be for up to ACCEPT_DEFER
    (its loop keeps polling), then takes it anyway: a sibling stuck in a long request must
    not leave the connection waiting.
    """
    from waitress.channel import HTTPChannel

    base_readable, base_accept = server.readable, server.handle_accept
    deferred_since: list[float] = []

    def open_channels() -> int:
        n = sum(1 for d in list(server._map.values()) if isinstance(d, HTTPChannel))  # noqa: SLF001
        loads[slot] = n
        return n

    def readable() -> bool:
        open_channels()
        return bool(base_readable())

    def handle_accept() -> None:
        mine, now = open_channels(), time.monotonic()
        if any(loads[i] < mine for i in range(len(loads)) if i != slot):
            if not deferred_since or now - deferred_since[0] > 10 * ACCEPT_DEFER:
                deferred_since[:] = [now]  # a new connection (the last one went elsewhere)
            if now - deferred_since[0] < ACCEPT_DEFER:
                return
        deferred_since.clear()
        base_accept()
        open_channels()

    server.readable, server.handle_accept = readable, handle_accept


def http_worker(settings: Settings, listener: socket.socket, ready: MpEvent,
                loads: Any = None, slot: int = 0) -> None:
    """Body of one HTTP worker process: waitress serving the Flask app on the shared socket
    (``loads``/``slot``: see :func:`balance_accepts`)."""
    _die_with_parent()

    def on_term(_signum: int, _frame: Any) -> None:
        # waitress' loop runs in this (main) thread and request handlers in its own threads:
        # SystemExit ends the loop, then waitress gives running requests 5 s to finish.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(settings.log_level)
    import waitress

    if _PREBUILT is not None:
        services, app = _PREBUILT  # forked: share the supervisor's fully built app
    else:
        services, app = _build_http_app(settings, _shared_port(settings))
    server = waitress.create_server(
        app, sockets=[listener], threads=settings.http_threads, ident="mini-PACS",
        asyncore_use_poll=True, channel_timeout=max(60, int(settings.network_timeout)),
        connection_limit=1000,
        # waitress' own cap (1 GiB by default) would answer 413 before our settings are consulted.
        max_request_body_size=_body_limit(settings),
    )
    if loads is not None and len(loads) > 1:
        balance_accepts(server, loads, slot)
    ready.set()
    try:
        server.run()
    finally:
        services.close()


#: The Flask app (and its services) built by the supervisor just before it forks the HTTP
#: workers; ``None`` in a worker started fresh (spawned after a crash), which builds its own.
_PREBUILT: tuple[Any, Any] | None = None


def _build_http_app(settings: Settings, dicom_port: int) -> tuple[Any, Any]:
    """Open the services and build the Flask app, with its lazy parts already initialised.

    Built once in the supervisor before forking, every HTTP worker shares the app's pages
    (routing tables, compiled templates, configured SQLAlchemy mappers) copy-on-write
    instead of building ~10 MB of private copies each.
    """
    from pacs.services import build_services
    from pacs.web import create_app

    services = build_services(settings)
    app = create_app(settings, services.index, services.blobs, dicom_port=dicom_port)
    _warm_up()
    _warm_statements(app)
    try:
        client = app.test_client()
        for path in ("/login", "/favicon.ico"):  # compiles routes and templates, loads the session key;
            # not /health: it pings the blob store, and a pooled S3 connection must not cross fork()
            client.get(path)
    except Exception:  # noqa: BLE001 - an optimisation only
        log.debug("HTTP warm-up failed", exc_info=True)
    # No pooled connection may cross fork(): each worker opens its own on first use.
    services.index.dispose()
    return services, app


def _warm_up() -> None:
    """Render tiny images so the first real request does not pay for lazy initialisation.

    pydicom's pixel handlers, numpy's and Pillow's encoders are imported on first use; that
    costs a few hundred milliseconds, which would land on the first image a user asks for.
    numpy also sets up its casts and loops per dtype on first use (~20 ms for a signed CT
    with a rescale and a window, measured on a worker's first request), so both an unsigned
    and a signed, rescaled image are rendered, with their own window and with one asked for.
    """
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from pacs.render import Instance, Window, encode

    for signed in (False, True):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        if signed:  # a CT slice: signed 16-bit, HU = stored - 1024 (PS3.3 C.11.1), a window
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
            ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
            ds.WindowCenter, ds.WindowWidth = 40, 400
            ds.PixelData = np.arange(-32, 32, dtype="<i2").tobytes()
        else:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = np.arange(64, dtype="<u2").tobytes()
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        try:
            frame = Instance.from_bytes(out.getvalue()).frame(1)
            for window in (None, Window(41.0, 401.0)):
                image = frame.render(window)
                for kind in ("image/jpeg", "image/png"):
                    encode(image, kind)
        except Exception:  # noqa: BLE001 - only an optimisation; never stop the worker for it
            log.debug("render warm-up failed", exc_info=True)


def _warm_statements(app: Any) -> None:
    """Compile the SQL of an image request before forking: the bearer token's user, the
    instance row, the series list (render-ahead, thumbnails).

    SQLAlchemy compiles a statement on its first use and keeps it in the engine's cache;
    compiled here, every worker inherits it instead of paying ~15 ms on its first request.
    The UIDs and token match nothing, so nothing is read or written.
    """
    from pacs.store.users import TOKEN_PREFIX

    ext = app.extensions["pacs"]
    nothing = "2.25.0"  # a UID (PS3.5 B.2) no instance has
    try:
        ext["users"].by_token(TOKEN_PREFIX + "warm-up")
        ext["index"].get_instance(nothing)
        ext["index"].instances_of(nothing, nothing)
    except Exception:  # noqa: BLE001 - an optimisation only (e.g. the database is not up yet)
        log.debug("SQL warm-up failed", exc_info=True)


def _body_limit(settings: Settings) -> int:
    """waitress' request body cap: the larger of our own limits (0 means none: no cap)."""
    limits = (settings.stow_max_mb, settings.max_instance_mb)
    if 0 in limits:
        return 1 << 50
    return max(limits) * 1024 * 1024


def _shared_port(settings: Settings) -> int:
    return int(settings.extra.get("dicom_port_bound", settings.dicom_port))


def ensure_admin(settings: Settings, users: Any) -> None:
    """First start: create ``admin`` with a random password kept in ``<data_dir>/initial-admin-password``.

    The password is printed at every start while it is still the admin's password, so the
    person who ran the quick start can always find it; after ``pacs user passwd admin`` the
    file is removed and nothing is printed.
    """
    import os
    import secrets
    from pathlib import Path

    path = Path(settings.data_dir) / "initial-admin-password"
    if users.count() == 0:
        password = secrets.token_urlsafe(12)
        users.add("admin", password, "admin", "Administrator")
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
    if not path.exists():
        return
    password = path.read_text().strip()
    if users.verify_password("admin", password):
        print(f"pacs: sign in as admin / {password} (stored in {path}; change it with "
              f"'pacs user passwd admin')", flush=True)
    else:
        path.unlink()  # changed since: the file no longer says anything true


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
        self.http_listener: socket.socket | None = None
        self.http_port = 0
        #: Open connections per HTTP worker, in shared memory (see balance_accepts).
        self.http_loads: Any = None

    def _worker_settings(self) -> Settings:
        """The settings plus the DICOM port actually bound (port 0 asks the OS for one)."""
        return dataclasses.replace(self.settings, extra={**self.settings.extra,
                                                         "dicom_port_bound": self.dicom_port})

    def _spawn(self, n: int, ctx: Any = None, kind: str = "dicom") -> Any:
        ctx = ctx or self.ctx
        ready = ctx.Event()
        args: tuple[Any, ...] = (self._worker_settings(), self.listener, ready)
        if kind == "http":
            args = (self._worker_settings(), self.http_listener, ready, self.http_loads, n)
            if self.http_loads is not None:
                self.http_loads[n] = 0  # a restarted worker starts with no connection
        proc = ctx.Process(target=dicom_worker if kind == "dicom" else http_worker, args=args,
                           name=f"{kind}-{n}", daemon=False)
        proc.start()
        what = "DICOM receiver" if kind == "dicom" else "HTTP worker"
        if not ready.wait(120):
            proc.kill()
            raise RuntimeError(f"{what} {n} did not start (see the log above)")
        if not proc.is_alive():
            raise RuntimeError(f"{what} {n} exited at start (exit code {proc.exitcode})")
        return proc

    def run(self) -> int:
        s = self.settings
        from pacs.services import build_services

        services = build_services(s, migrate=True)
        if s.load_samples and services.index.counts().instances == 0:
            self._load_samples(services)

        from pacs.store.users import Users

        ensure_admin(s, Users(services.index))

        from pacs.scp.server import make_listener

        self.listener = make_listener(s.host, s.dicom_port)
        self.dicom_port = self.listener.getsockname()[1]
        self.http_listener = make_listener(s.host, s.http_port, backlog=1024)
        self.http_port = self.http_listener.getsockname()[1]
        n, n_http = s.resolved_dicom_workers, s.resolved_http_workers
        self.http_loads = mp.RawArray("i", max(n_http, 1))
        # Nothing of ours may be running in a thread or hold a connection across fork().
        # pacs.scp.server is imported above (make_listener): every receiver shares it;
        # the web side is imported here for the same reason.
        import waitress  # noqa: F401

        import pacs.web  # noqa: F401

        services.close()

        global _PREBUILT
        if n_http and threading.active_count() == 1:
            # Also imports the codecs and encoders (its render warm-up), once, for every worker.
            _PREBUILT = _build_http_app(self._worker_settings(), self.dicom_port)
        gc.collect()
        gc.freeze()  # keep the collector from touching (and so copying) the shared objects
        use_fork = threading.active_count() == 1
        if not use_fork:
            _PREBUILT = None  # a spawned worker cannot inherit it
        ctx = self.fork_ctx if use_fork else self.ctx
        for i in range(n):
            self.workers.append(("dicom", self._spawn(i, ctx, "dicom")))
        for i in range(n_http):
            self.workers.append(("http", self._spawn(i, ctx, "http")))
        gc.unfreeze()

        shown = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
        print(f"pacs: DICOM listening on {s.host}:{self.dicom_port} AE title {s.ae_title} "
              f"({n} receiver process{'es' if n > 1 else ''})", flush=True)
        print(f"pacs: HTTP listening on http://{shown}:{self.http_port}/ "
              f"({n_http} waitress worker process{'es' if n_http > 1 else ''})", flush=True)
        print(f"pacs: index {services.index}, blobs {services.blobs}", flush=True)
        print("pacs: ready (SIGTERM or Ctrl-C to stop)", flush=True)

        def on_signal(signum: int, _frame: Any) -> None:
            self.stopping.append(signum)  # a plain flag: no locks inside a signal handler

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

        while not self.stopping:
            time.sleep(0.25)
            for i, (kind, proc) in enumerate(self.workers):
                if not proc.is_alive() and not self.stopping:
                    log.error("%s worker %s exited (code %s); restarting it", kind, proc.name, proc.exitcode)
                    try:
                        slot = sum(1 for k, _ in self.workers[:i] if k == kind)
                        self.workers[i] = (kind, self._spawn(slot, None, kind))
                    except RuntimeError as exc:
                        log.error("%s", exc)

        print("pacs: stopping: finishing running associations and requests", flush=True)
        for _kind, proc in self.workers:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: stop accepting, drain, exit
        for _kind, proc in self.workers:
            proc.join(STOP_GRACE + 10)
            if proc.is_alive():
                proc.kill()
        self.listener.close()
        self.http_listener.close()
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
