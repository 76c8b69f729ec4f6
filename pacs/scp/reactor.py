"""Make pynetdicom's polling threads sleep until there is work.

pynetdicom 3.0 runs two threads per association that poll: the DUL reactor checks its
socket and queues and sleeps 1 ms when idle; the association reactor sleeps 1 ms before
every look at its DIMSE queue. Measured here, four idle associations cost 63 % of a CPU
core, and during a transfer the sleeps add latency to every instance. On a 2-core
archive that is CPU a receiver needs.

This module swaps the ``time`` module those two pynetdicom modules see for a stand-in
whose ``sleep`` waits on the event the thread is really waiting for:

- the DUL reactor waits on its socket (data from the peer) and on a wake-up pipe that
  ``send_pdu`` writes to (a PDU to send), up to ``IDLE_WAIT``: in associations we
  accepted, and in associations we requested (C-MOVE sub-associations) once their
  socket is connected;
- the association reactor of an association we accepted waits on its DIMSE message
  queue, up to ``IDLE_WAIT``; the DUL also wakes it when it hands the association an
  A-RELEASE or A-ABORT (which arrive on another queue), so a release is answered at once
  rather than at the next timer tick (PS3.8 7.2: the SCU waits for our A-RELEASE-RP).

Everything else pynetdicom does with ``time`` is passed through unchanged, and any
sleep it cannot map to an event falls back to the real one. A requestor's DUL polls as
before until its socket is connected (its reactor starts before the connection: a
socket not yet connected would look readable and turn the wait into a busy loop) and
again once it is closed. A requestor's association reactor keeps pynetdicom's 1 ms
polling: while we send sub-operations it is parked (:func:`pacs.scp.sender.park_reactor`),
and pynetdicom's own ``send_*`` calls pause it by waiting for that 1 ms turn. Timers
(ARTIM, idle timeouts) are checked at least every ``IDLE_WAIT``.
"""

from __future__ import annotations

import os
import queue
import select
import socket
import threading
import time
import weakref
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: Longest an idle reactor sleeps before re-checking its timers and flags.
IDLE_WAIT = 0.005

_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
_installed = False
_pipe_lock = threading.Lock()


def _wake_pipe(dul: DULServiceProvider) -> tuple[int, int]:
    pipe = getattr(dul, "_pacs_wake", None)
    if pipe is not None:
        return pipe
    with _pipe_lock:  # the DUL thread and a sender may both get here first
        pipe = getattr(dul, "_pacs_wake", None)
        if pipe is not None:
            return pipe
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        pipe = (r, w)
        dul._pacs_wake = pipe  # type: ignore[attr-defined]
        weakref.finalize(dul, _close_pipe, pipe)
    return pipe


def _close_pipe(pipe: tuple[int, int]) -> None:
    for fd in pipe:
        try:
            os.close(fd)
        except OSError:
            pass


def _event_driven(dul: DULServiceProvider) -> bool:
    """Whether ``dul``'s reactor may wait on its socket and wake-up pipe instead of polling."""
    assoc = getattr(dul, "assoc", None)
    if assoc is None:
        return False
    if assoc.is_acceptor:
        return True
    # A requestor's DUL runs before and after its connection: only while connected.
    sock = getattr(dul, "socket", None)
    return bool(sock is not None and sock.socket is not None and getattr(sock, "_is_connected", False))


class _DulClock:
    """``time`` as pynetdicom.dul sees it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        dul = threading.current_thread()
        sock = getattr(getattr(dul, "socket", None), "socket", None)
        if not isinstance(dul, DULServiceProvider) or sock is None or not _event_driven(dul):
            time.sleep(seconds)
            return
        r, _w = _wake_pipe(dul)
        try:
            if _QUICKACK is not None:
                # Many SCUs (dcmtk among them) leave Nagle on and write a PDU in two
                # parts; the second waits for our ACK, which Linux delays ~40 ms. While
                # we wait for the peer, ACK at once (not sticky: set before each wait).
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            ready, _, _ = select.select([sock, r], [], [], IDLE_WAIT)
        except (OSError, ValueError):  # socket closed under us: behave as before
            time.sleep(seconds)
            return
        if r in ready:
            try:
                os.read(r, 4096)
            except BlockingIOError:
                pass


class _AssociationClock:
    """``time`` as pynetdicom.association sees it."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        assoc = threading.current_thread()
        # Only the reactor's 1 ms pause before each look at the DIMSE queue.
        if seconds != 0.001 or not isinstance(assoc, Association) or not assoc.is_acceptor:
            time.sleep(seconds)
            return
        q = assoc.dimse.msg_queue
        with q.not_empty:
            if not q._qsize():  # noqa: SLF001 - Queue's own check, under its own lock
                q.not_empty.wait(IDLE_WAIT)


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DUL's ``to_user_queue``: a put also wakes the association's reactor.

    The reactor sleeps on its DIMSE message queue (:class:`_AssociationClock`); release and
    abort primitives arrive here instead, and would otherwise wait out ``IDLE_WAIT``.
    """

    def __init__(self, dul: DULServiceProvider) -> None:
        super().__init__()
        self._dul = weakref.ref(dul)  # no cycle: the DUL owns this queue

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        dul = self._dul()
        msg_queue = getattr(getattr(getattr(dul, "assoc", None), "dimse", None), "msg_queue", None)
        if msg_queue is not None:  # after our own lock is released: no lock-order question
            with msg_queue.not_empty:
                msg_queue.not_empty.notify_all()


def _dul_init(self: DULServiceProvider, assoc: Any) -> None:
    _ORIGINAL_DUL_INIT(self, assoc)
    self.to_user_queue = _WakingQueue(self)


_ORIGINAL_DUL_INIT = DULServiceProvider.__init__


def _send_pdu_and_wake(self: DULServiceProvider, primitive: Any) -> None:
    _ORIGINAL_SEND_PDU(self, primitive)
    if not _event_driven(self):
        return
    try:
        os.write(_wake_pipe(self)[1], b"\0")
    except (BlockingIOError, OSError):
        pass  # a full pipe already means "wake up"


_ORIGINAL_SEND_PDU = DULServiceProvider.send_pdu


def install() -> None:
    """Patch pynetdicom once per process (idempotent)."""
    global _installed
    if _installed:
        return
    _dul.time = _DulClock()  # type: ignore[assignment]
    _association.time = _AssociationClock()  # type: ignore[assignment]
    DULServiceProvider.send_pdu = _send_pdu_and_wake  # type: ignore[method-assign]
    DULServiceProvider.__init__ = _dul_init  # type: ignore[method-assign]
    _installed = True
