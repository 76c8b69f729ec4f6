"""The event-driven pynetdicom reactors (pacs.scp.reactor)."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace

from pynetdicom.dul import DULServiceProvider

from pacs.scp import reactor


def test_release_primitive_wakes_the_association_reactor() -> None:
    """An A-RELEASE handed to the association must end its wait on the DIMSE queue at once.

    Before: the reactor slept out its timer tick (IDLE_WAIT) before it saw the release, on
    every association. The waiter here would sleep 10 s if nothing woke it.
    """
    reactor.install()
    msg_queue: queue.Queue[object] = queue.Queue()
    assoc = SimpleNamespace(dimse=SimpleNamespace(msg_queue=msg_queue))
    dul = DULServiceProvider(assoc)  # type: ignore[arg-type]
    assert isinstance(dul.to_user_queue, reactor._WakingQueue)
    woke = threading.Event()
    waiting = threading.Event()

    def wait() -> None:
        with msg_queue.not_empty:
            waiting.set()
            msg_queue.not_empty.wait(10)
        woke.set()

    t = threading.Thread(target=wait)
    t.start()
    assert waiting.wait(5)
    t0 = time.monotonic()
    dul.to_user_queue.put("A-RELEASE")  # what the state machine does (PS3.8 9.2, AR-2)
    assert woke.wait(5), "the association reactor was not woken"
    assert time.monotonic() - t0 < 5
    t.join()
    # The queue itself still behaves like the one pynetdicom expects.
    assert dul.to_user_queue.get_nowait() == "A-RELEASE"
