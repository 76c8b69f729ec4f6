"""pacs.scp.server: the AE's supported contexts copy cheaply and still negotiate."""

from __future__ import annotations

import copy

from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pacs.config import Settings
from pacs.scp.server import _SupportedContext, build_ae, start_scp, stop_scp


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
