"""The DICOM listener: a pynetdicom AE with thin handlers over the ingest service.

Performance notes (see README "Benchmarks"): the listening socket sets SO_REUSEPORT
so several receiving processes can share one port (one GIL each), every accepted
connection sets TCP_NODELAY (Nagle would stall each small DIMSE response), and we
advertise a large maximum PDU so instances arrive in few P-DATA PDUs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs.config import Settings
from pacs.errors import DuplicateConflict, InvalidInstance, StorageUnavailable
from pacs.ingest import IngestService, Origin, Outcome

log = logging.getLogger(__name__)

# Accept any storage SOP class a modality proposes, private ones included (PS3.4 B.5
# lists the standard ones; vendors add their own). Non-storage services still need an
# explicit supported context.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom logs every PDU at "standard" level: per-PDU Python work we do not want.
_config.LOG_HANDLER_LEVEL = "none"

# DIMSE status codes (PS3.4 Annex B.2.3 for C-STORE, PS3.7 Annex C for general ones).
SUCCESS = 0x0000
WARNING_ELEMENTS_DISCARDED = 0xB006
REFUSED_OUT_OF_RESOURCES = 0xA700
ERROR_CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110


def _status(code: int, comment: str = "") -> Dataset:
    """A status dataset with an Error Comment (0000,0902) LO: at most 64 characters."""
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment.encode("ascii", "replace").decode()[:64]
    return ds


def origin_of(event: evt.Event) -> Origin:
    req = event.assoc.requestor
    return Origin("dicom", calling_ae=str(req.ae_title).strip(), address=f"{req.address}:{req.port}")


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: the Verification service always succeeds (PS3.4 A.4)."""
    return SUCCESS


def handle_store(event: evt.Event, ingest: IngestService) -> int | Dataset:
    """EVT_C_STORE: hand the bytes as received to the ingest service, then map the outcome."""
    origin = origin_of(event)
    try:
        raw = event.encoded_dataset()
    except Exception as exc:  # noqa: BLE001 - malformed command/file meta from the peer
        log.warning("C-STORE from %s: cannot build the file meta: %s", origin, exc)
        return _status(ERROR_CANNOT_UNDERSTAND, f"cannot understand: {exc}")
    try:
        result = ingest.store(raw, origin)
    except InvalidInstance as exc:
        log.warning("C-STORE from %s refused, cannot understand: %s", origin, exc)
        return _status(ERROR_CANNOT_UNDERSTAND, str(exc))
    except StorageUnavailable as exc:
        log.error("C-STORE from %s refused, storage unavailable: %s", origin, exc)
        return _status(REFUSED_OUT_OF_RESOURCES, "storage unavailable, retry later")
    except DuplicateConflict as exc:
        return _status(DUPLICATE_SOP_INSTANCE, str(exc))
    except Exception:  # noqa: BLE001 - a bug must not take the association down
        log.exception("C-STORE from %s failed", origin)
        return _status(PROCESSING_FAILURE, "processing failure")
    if result.outcome in (Outcome.KEPT_FIRST, Outcome.REPLACED):
        return _status(WARNING_ELEMENTS_DISCARDED if result.outcome is Outcome.KEPT_FIRST else SUCCESS,
                       result.message)
    return SUCCESS


def handle_conn_open(event: evt.Event, loop_delay: float) -> None:
    """EVT_CONN_OPEN: shorten pynetdicom's DUL polling sleep for this association.

    pynetdicom's DUL reactor polls its socket and queues, sleeping 1 ms whenever idle;
    with one instance per request/response round trip that sleep is paid several times
    per instance. A shorter one trades a little idle CPU for lower latency.
    """
    event.assoc.dul._run_loop_delay = loop_delay


def bind_handlers(ingest: IngestService, loop_delay: float = 0.0002) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, handle_conn_open, [loop_delay]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest]),
    ]


def build_ae(settings: Settings) -> AE:
    """The Application Entity: every storage class x every transfer syntax, plus Verification."""
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.network_timeout
    ae.dimse_timeout = settings.network_timeout
    syntaxes = list(AllTransferSyntaxes)
    ae.add_supported_context(Verification, syntaxes)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, syntaxes)
    return ae


class ReusePortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, sharing its port with sibling processes."""

    def server_bind(self) -> None:
        sock = self.socket
        assert sock is not None
        # Several processes bind the same port; the kernel spreads connections (Linux 3.9+).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        # Without it every small PDU waits for the peer's delayed ACK (~40 ms).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def start_scp(settings: Settings, ingest: IngestService, port: int | None = None) -> ReusePortServer:
    """Start listening in a background thread; return the server (``server_address`` has the port)."""
    ae = build_ae(settings)
    address = (settings.host, settings.dicom_port if port is None else port)
    server = ae.make_server(
        address, evt_handlers=bind_handlers(ingest), server_class=ReusePortServer
    )
    thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server  # type: ignore[return-value]


def stop_scp(server: ReusePortServer, grace: float = 30.0) -> int:
    """Stop accepting, let running associations finish (up to ``grace`` s); return how many were cut."""
    server.shutdown()
    deadline = time.monotonic() + grace
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    left = server.active_associations
    for assoc in left:
        assoc.abort()
    return len(left)
