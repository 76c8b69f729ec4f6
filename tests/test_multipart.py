"""multipart/related framing and media-type parsing, checked against Python's email parser."""

from __future__ import annotations

import email
import email.policy
import io

import pytest

import pacs.multipart as mp
from pacs.multipart import MultipartError, Part, decode, encode, parse_accept, parse_media_type, scan


def test_media_type_parameters_and_quotes() -> None:
    m = parse_media_type('Multipart/Related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1;'
                         ' boundary="a;b,c"')
    assert m.type == "multipart/related"
    assert m.params == {"type": "application/dicom", "transfer-syntax": "1.2.840.10008.1.2.1", "boundary": "a;b,c"}
    with pytest.raises(MultipartError):
        parse_media_type("dicom")
    with pytest.raises(MultipartError):
        parse_media_type('multipart/related; type="unterminated')


def test_accept_is_split_outside_quotes_and_sorted_by_weight() -> None:
    ranges = parse_accept('multipart/related; type="application/dicom, x"; q=0.5, '
                          'application/dicom+json, image/png;q=0')
    assert [r.type for r in ranges] == ["application/dicom+json", "multipart/related"]
    assert ranges[1].params["type"] == "application/dicom, x" and ranges[1].q == 0.5
    assert [r.type for r in parse_accept("")] == ["*/*"]
    with pytest.raises(MultipartError):
        parse_accept("text/html;q=2")


def _parts() -> list[Part]:
    return [Part("application/dicom", b"first\r\n--not-a-boundary"),
            Part("application/dicom", iter([b"sec", b"", b"ond"]), (("Content-Location", "/x"),)),
            Part("application/octet-stream", b"")]


def test_encoding_is_what_the_email_parser_reads() -> None:
    body = b"".join(encode(_parts(), "BOUND"))
    msg = email.message_from_bytes(
        b'Content-Type: multipart/related; type="application/dicom"; boundary=BOUND\r\n\r\n' + body,
        policy=email.policy.HTTP)
    payloads = [p.get_payload(decode=True) for p in msg.iter_parts()]
    assert payloads == [b"first\r\n--not-a-boundary", b"second", b""]
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "application/dicom", "application/dicom", "application/octet-stream"]


def test_scan_round_trip_with_preamble_epilogue_and_empty_headers() -> None:
    body = (b"preamble\r\n" + b"".join(encode(_parts(), "b1")) + b"epilogue"
            + b"\r\n--b1\r\n\r\nnot a part")  # after the close delimiter: ignored
    parts = decode(body, "b1")
    assert [c for _, c in parts] == [b"first\r\n--not-a-boundary", b"second", b""]
    assert parts[1][0] == {"content-type": "application/dicom", "content-location": "/x"}
    bare = b"--b2\r\n\r\nraw\r\n--b2--"
    assert decode(bare, "b2") == [({}, b"raw")]


def test_boundary_across_read_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mp, "SCAN_CHUNK", 7)
    contents = [bytes([i]) * (i * 5 + 3) for i in range(1, 12)]
    body = b"".join(encode([Part("application/dicom", c) for c in contents], "xyz"))
    spans = scan(io.BytesIO(body), "xyz", len(body))
    assert [body[s.offset:s.offset + s.length] for s in spans] == contents


@pytest.mark.parametrize("body", [
    b"--b\r\nContent-Type: application/dicom\r\n\r\ndata",  # no closing delimiter
    b"no boundary at all",
    b"--b\r\nContent-Type application/dicom\r\n\r\ndata\r\n--b--",  # header without colon
    b"--bX\r\n\r\ndata\r\n--b--",  # delimiter line with junk after the boundary
])
def test_malformed_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(MultipartError):
        decode(body, "b")


def test_empty_message_has_only_the_close_delimiter() -> None:
    body = b"".join(encode([], "q"))
    assert body == b"--q--\r\n" and decode(body, "q") == []
