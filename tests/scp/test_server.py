"""pacs.scp.server: the AE's supported contexts copy cheaply and still negotiate."""

from __future__ import annotations

import copy
import socket
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.config import Settings
from pacs.scp.server import (
    SharedListenerServer, _SupportedContext, build_ae, make_listener, start_scp, stop_scp,
)


def test_a_supported_context_copy_is_independent_and_equal() -> None:
    original = build_ae(Settings()).supported_contexts
    for cx in original:
        cx.__class__ = _SupportedContext
    before = [dict(cx.__dict__) for cx in original]
    copies = copy.deepcopy(original)
    assert [c.__dict__ for c in copies] == before
    assert all(isinstance(c, PresentationContext) for c in copies)
    for c in copies:  # what negotiation does to its copy must not reach the server's list
        c.transfer_syntax.clear()
        c.context_id = 99
    assert [dict(cx.__dict__) for cx in original] == before


def test_the_server_negotiates_with_its_cheaply_copied_contexts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=tmp_path, dicom_port=0, host="127.0.0.1")
    from pacs.services import build_services

    services = build_services(settings, migrate=True)
    server = start_scp(settings, services.ingest)
    try:
        assert all(type(cx) is _SupportedContext for cx in server.contexts)
        port = server.server_address[1]
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        for _ in range(2):  # the second association negotiates against untouched contexts
            assoc = ae.associate("127.0.0.1", port, ae_title=settings.ae_title)
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0x0000
            assoc.release()
    finally:
        stop_scp(server, grace=5)
        services.close()



def _fake_server(monkeypatch: pytest.MonkeyPatch, associations: list[Any]) -> SharedListenerServer:
    """A server object whose running associations are ``associations`` (no AE behind it)."""
    server = SharedListenerServer.__new__(SharedListenerServer)
    monkeypatch.setattr(SharedListenerServer, "active_associations", property(lambda self: associations))
    return server


def _assoc(released: bool = False, aborted: bool = False, rejected: bool = False) -> Any:
    return SimpleNamespace(is_released=released, is_aborted=aborted, is_rejected=rejected)


def test_only_associations_not_yet_ended_count_as_busy(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom's thread lingers ~10 ms after a release: it is not a busy association."""
    server = _fake_server(monkeypatch, [_assoc(), _assoc(released=True), _assoc(aborted=True),
                                        _assoc(rejected=True), _assoc()])
    assert server.busy_associations() == 2


@pytest.mark.parametrize("lingering, waits", [(_assoc(released=True), False), (_assoc(), True)])
def test_a_new_association_waits_only_behind_a_busy_one(monkeypatch: pytest.MonkeyPatch,
                                                        lingering: Any, waits: bool) -> None:
    """The least-busy hand-off (a busy receiver lets a sibling accept first) must not delay a
    peer that reconnects right after its release (a C-FIND, then a C-MOVE)."""
    from pacs.scp import server as server_module

    listener = make_listener("127.0.0.1", 0)
    server = _fake_server(monkeypatch, [lingering])
    server.socket = listener
    server._ssl_context = None  # plain TCP, as pacs serve listens
    sleeps: list[float] = []
    monkeypatch.setattr(server_module, "time", SimpleNamespace(sleep=sleeps.append, monotonic=time.monotonic))
    client = socket.create_connection(listener.getsockname())  # queued on the listener at once
    try:
        conn, _ = server.get_request()
        conn.close()
    finally:
        client.close()
        listener.close()
    assert bool(sleeps) is waits
