"""multipart/related bodies (RFC 2387, RFC 2046 5.1) and media-type headers, for DICOMweb (pure: no Flask).

PS3.18 8.6.1.2 / 8.7.3: WADO-RS answers and STOW-RS requests carry DICOM instances, frames
and bulk data as ``multipart/related; type="..."; boundary=...`` bodies. This module

- parses ``Content-Type`` and ``Accept`` values with their parameters (quoted strings,
  commas inside quotes, ``q`` weights): :func:`parse_media_type`, :func:`parse_accept`;
- encodes a body as a generator of byte chunks, so a study is streamed part by part and
  never held in memory: :func:`encode`;
- finds the parts of a received body in a seekable file (the STOW-RS request is spooled
  first) without reading it into memory: :func:`scan`; and :func:`decode` for bytes.

Framing (RFC 2046 5.1.1): the delimiter is CRLF ``--boundary``; the CRLF before it belongs
to the delimiter, not to the part. The first delimiter may start the body without the CRLF;
the last one is followed by ``--``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

#: Read size when scanning a spooled body for delimiters.
SCAN_CHUNK = 1024 * 1024


class MultipartError(ValueError):
    """A body or header that does not follow RFC 2046 / RFC 7231; the message says where."""


@dataclass(frozen=True)
class MediaType:
    """``type/subtype`` (lower case) and its parameters (names lower case, values unquoted)."""

    type: str
    params: dict[str, str] = field(default_factory=dict)
    #: Weight from an Accept header (RFC 7231 5.3.1); 1.0 elsewhere.
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """True if this (possibly wildcard) range covers the concrete ``media_type``."""
        if self.type in ("*/*", "*"):
            return True
        major, _, minor = self.type.partition("/")
        other_major, _, other_minor = media_type.lower().partition("/")
        return major == other_major and minor in ("*", other_minor)

    def __str__(self) -> str:
        params = "".join(f"; {k}={_quote(v)}" for k, v in self.params.items())
        return f"{self.type}{params}"


_TOKEN_SPECIALS = set('()<>@,;:\\"/[]?={} \t')


def _quote(value: str) -> str:
    if value and not any(c in _TOKEN_SPECIALS for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _split(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double quotes (backslash escapes inside quotes)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif quoted and ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise MultipartError(f"unterminated quoted string in {text!r}")
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        out: list[str] = []
        it = iter(inner)
        for ch in it:
            out.append(next(it, "") if ch == "\\" else ch)
        return "".join(out)
    return value


def parse_media_type(text: str) -> MediaType:
    """One media type with parameters: ``multipart/related; type="application/dicom"``."""
    pieces = _split(text, ";")
    mtype = pieces[0].strip().lower()
    if mtype != "*" and ("/" not in mtype or not all(mtype.partition("/")[::2])):
        raise MultipartError(f"not a media type: {text.strip()!r}")
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if not piece.strip():
            continue
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not name:
            raise MultipartError(f"malformed parameter {piece.strip()!r} in {text.strip()!r}")
        if name == "q":
            try:
                q = float(value.strip())
            except ValueError:
                raise MultipartError(f"malformed weight q={value.strip()!r}") from None
            if not 0.0 <= q <= 1.0:
                raise MultipartError(f"weight q={value.strip()} is not between 0 and 1")
            continue
        params[name] = _unquote(value)
    return MediaType("*/*" if mtype == "*" else mtype, params, q)


def parse_accept(text: str | None) -> list[MediaType]:
    """The media ranges of an Accept header, best first (stable for equal weights); ``*/*`` if empty.

    Ranges with ``q=0`` are "not acceptable" (RFC 7231 5.3.1) and are left out.
    """
    if text is None or not text.strip():
        return [MediaType("*/*")]
    ranges = [parse_media_type(p) for p in _split(text, ",") if p.strip()]
    ranges = [r for r in ranges if r.q > 0]
    return sorted(ranges, key=lambda r: -r.q)


def new_boundary() -> str:
    """A boundary that cannot occur in DICOM data by chance (RFC 2046 5.1.1: at most 70 characters)."""
    return "pacs-" + secrets.token_hex(16)


@dataclass(frozen=True)
class Part:
    """One body part: its Content-Type (and optional extra headers) and its content."""

    content_type: str
    #: The bytes, or an iterable of chunks (streamed as they come).
    body: bytes | Iterable[bytes]
    headers: tuple[tuple[str, str], ...] = ()


def encode(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """Yield the body of a multipart message part by part (nothing is buffered beyond one chunk)."""
    first = True
    for part in parts:
        prefix = "" if first else "\r\n"
        head = [f"{prefix}--{boundary}", f"Content-Type: {part.content_type}"]
        head += [f"{name}: {value}" for name, value in part.headers]
        yield ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        first = False
        if isinstance(part.body, (bytes, bytearray, memoryview)):
            if part.body:
                yield bytes(part.body)
        else:
            for chunk in part.body:
                if chunk:
                    yield chunk
    yield (f"--{boundary}--\r\n" if first else f"\r\n--{boundary}--\r\n").encode("latin-1")


@dataclass(frozen=True)
class PartSpan:
    """Where one part of a scanned body is: its headers and the offset/length of its content."""

    headers: dict[str, str]
    offset: int
    length: int

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError(f"malformed part header line {line[:80]!r}")
        headers[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return headers


def _find(fh: BinaryIO, needle: bytes, start: int, end: int) -> int:
    """Offset of ``needle`` in ``fh`` at or after ``start`` (before ``end``), or -1."""
    pos = start
    overlap = len(needle) - 1
    while pos < end:
        fh.seek(pos)
        chunk = fh.read(min(SCAN_CHUNK, end - pos))
        if not chunk:
            return -1
        i = chunk.find(needle)
        if i >= 0:
            return pos + i
        if pos + len(chunk) >= end:
            return -1
        pos += max(1, len(chunk) - overlap)
    return -1


def scan(fh: BinaryIO, boundary: str, size: int, *, max_header: int = 16384) -> list[PartSpan]:
    """Find every part of a multipart body held in the seekable ``fh`` (``size`` bytes long).

    Raises :class:`MultipartError` when the body is not multipart with this boundary,
    or is cut short (no closing delimiter).
    """
    if not boundary or len(boundary) > 70:
        raise MultipartError("the boundary parameter must be 1-70 characters (RFC 2046 5.1.1)")
    dash = b"--" + boundary.encode("latin-1")
    delimiter = b"\r\n" + dash
    fh.seek(0)
    if fh.read(len(dash)) == dash:
        at = 0
    else:
        # A preamble before the first delimiter is allowed and ignored (RFC 2046 5.1.1).
        found = _find(fh, delimiter, 0, size)
        if found < 0:
            raise MultipartError("no part found: the body does not contain the boundary")
        at = found + 2
    spans: list[PartSpan] = []
    while True:
        pos = at + len(dash)
        fh.seek(pos)
        tail = fh.read(2)
        if tail == b"--":
            return spans  # the close delimiter; anything after it is an epilogue
        # Transport padding (linear white space) may follow a delimiter before its CRLF.
        line_end = _find(fh, b"\r\n", pos, min(size, pos + 1024))
        fh.seek(pos)
        if line_end < 0 or fh.read(line_end - pos).strip(b" \t"):
            raise MultipartError(f"malformed delimiter line at byte {at}")
        header_start = line_end + 2
        fh.seek(header_start)
        if fh.read(2) == b"\r\n":
            headers: dict[str, str] = {}  # a part without headers (RFC 2046: defaults apply)
            content = header_start + 2
        else:
            header_end = _find(fh, b"\r\n\r\n", header_start, min(size, header_start + max_header))
            if header_end < 0:
                raise MultipartError(f"part {len(spans) + 1}: headers not terminated by an empty line")
            fh.seek(header_start)
            headers = _parse_headers(fh.read(header_end - header_start))
            content = header_end + 4
        nxt = _find(fh, delimiter, content, size)
        if nxt < 0:
            raise MultipartError(f"part {len(spans) + 1} is not closed: the body is truncated")
        spans.append(PartSpan(headers, content, nxt - content))
        at = nxt + 2


def decode(body: bytes, boundary: str) -> list[tuple[dict[str, str], bytes]]:
    """The ``(headers, content)`` of every part of a multipart body held in memory."""
    import io

    fh = io.BytesIO(body)
    return [(s.headers, body[s.offset : s.offset + s.length]) for s in scan(fh, boundary, len(body))]
