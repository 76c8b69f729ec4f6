"""The DICOM listener: a pynetdicom AE with thin handlers over the ingest service.

Performance notes (see README "Benchmarks"): several receiving processes (one GIL
each) accept on one shared listening socket, every accepted connection sets TCP_NODELAY (Nagle would stall each small DIMSE response), and we
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
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from pacs.config import Settings
from pacs.errors import DuplicateConflict, InvalidInstance, StorageUnavailable
from pacs.ingest import IngestService, Origin, Outcome
from pacs.scp.find import find_contexts, handle_find
from pacs.scp.retrieve import IDENTIFIER_SYNTAXES, bind_retrieve_handlers, retrieve_contexts
from pacs.store.index import Index
from pacs.scp import reactor

log = logging.getLogger(__name__)

# Accept any storage SOP class a modality proposes, private ones included (PS3.4 B.5
# lists the standard ones; vendors add their own). Non-storage services still need an
# explicit supported context.
_config.UNRESTRICTED_STORAGE_SERVICE = True
# pynetdicom logs every PDU at "standard" level: per-PDU Python work we do not want.
_config.LOG_HANDLER_LEVEL = "none"
# Its reactor threads poll with 1 ms sleeps; make them wait for work instead.
reactor.install()

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


def bind_handlers(
    ingest: IngestService, index: Index | None = None, settings: Settings | None = None,
) -> list[Any]:
    index = index if index is not None else ingest.index
    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest]),
        (evt.EVT_C_FIND, handle_find, [index, settings or Settings()]),
        # --- C-MOVE / C-GET (issue 3, pacs/scp/retrieve.py) ---
        *bind_retrieve_handlers(index, ingest.blobs, settings or Settings()),
        # --- end C-MOVE / C-GET ---
    ]


def build_ae(settings: Settings) -> AE:
    """The Application Entity: every storage class, Verification, C-FIND, C-MOVE, C-GET.

    Storage SOP classes are not listed as supported contexts: with
    ``UNRESTRICTED_STORAGE_SERVICE`` pynetdicom accepts any storage context a peer
    proposes, in the first transfer syntax it proposes, and grants both roles when a
    C-GET requestor asks for SCP/SCU role selection (PS3.7 D.3.3.4, PS3.4 C.4.3).
    Listing ~150 classes x 39 syntaxes would cost nothing in negotiation but pynetdicom
    deep-copies the supported list for every association: 38 ms each, measured here.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.network_timeout
    ae.dimse_timeout = settings.network_timeout
    syntaxes = list(AllTransferSyntaxes)
    ae.add_supported_context(Verification, syntaxes)
    for abstract in retrieve_contexts():
        ae.add_supported_context(abstract, IDENTIFIER_SYNTAXES)
    for abstract in find_contexts():
        ae.add_supported_context(abstract, syntaxes)
    return ae


class _SupportedContext(PresentationContext):
    """A supported presentation context that copies itself cheaply.

    pynetdicom deep-copies the server's supported contexts for every association it accepts
    (``RequestHandler._create_association``), so that negotiation cannot change them: about
    1 ms of generic ``copy.deepcopy`` per association here, C-ECHO, C-FIND and C-STORE alike.
    A context holds immutable values (UIDs, flags) and one list of transfer syntaxes; a copy
    of its attributes with that list copied is as independent as the deep copy.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SupportedContext:
        new = PresentationContext.__new__(type(self))
        new.__dict__.update({k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()})
        return new


class SharedListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket shared by sibling processes.

    Every receiver process waits on the same (non-blocking) socket. When a modality
    connects, all of them wake and race to ``accept()``; a receiver that is already busy
    waits a moment first, so new associations go to the least busy process. (Plain
    SO_REUSEPORT hashes connections to processes blindly: four associations often end
    up three on one process and one on the other.)
    """

    listener: socket.socket | None = None

    def server_bind(self) -> None:
        if self.listener is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()  # the one socketserver made; we use the shared one instead
        self.socket = self.listener
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self.listener is None:
            super().server_activate()
            self.socket.setblocking(False)  # type: ignore[union-attr]

    def busy_associations(self) -> int:
        """Associations still being negotiated or in use.

        Not every live association thread: after a release pynetdicom's thread lingers about
        10 ms while its DUL winds down (``Association.kill``), and counting it would hold back
        the next association of a peer that reconnects at once (a C-FIND then a C-MOVE, a
        modality opening one association per study) by the wait below, for nothing.
        """
        return sum(1 for a in self.active_associations
                   if not (a.is_released or a.is_aborted or a.is_rejected))

    def get_request(self) -> tuple[socket.socket, Any]:
        busy = self.busy_associations()
        if busy:
            time.sleep(min(0.002 * busy, 0.01))  # let an idle sibling take it
        client, address = super().get_request()  # BlockingIOError if a sibling was faster
        client.setblocking(True)
        # Without it every small PDU waits for the peer's delayed ACK (~40 ms).
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def make_listener(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A listening socket, created once and shared by every worker process (DICOM or HTTP).

    Non-blocking: when several processes wake for one connection, the losers get EAGAIN.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def start_scp(
    settings: Settings, ingest: IngestService, listener: socket.socket | None = None
) -> SharedListenerServer:
    """Start serving in a background thread, on ``listener`` or on a socket of its own."""
    ae = build_ae(settings)
    server_class = type("Server", (SharedListenerServer,), {"listener": listener})
    address = listener.getsockname()[:2] if listener is not None else (settings.host, settings.dicom_port)
    server = ae.make_server(address, evt_handlers=bind_handlers(ingest, ingest.index, settings), server_class=server_class)
    for cx in server.contexts:
        if type(cx) is PresentationContext:
            cx.__class__ = _SupportedContext
    thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
    thread.start()
    ae._servers.append(server)
    return server  # type: ignore[return-value]


def stop_scp(server: SharedListenerServer, grace: float = 30.0) -> int:
    """Stop accepting, let running associations finish (up to ``grace`` s); return how many were cut."""
    server.shutdown()
    deadline = time.monotonic() + grace
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    left = server.active_associations
    for assoc in left:
        assoc.abort()
    return len(left)
