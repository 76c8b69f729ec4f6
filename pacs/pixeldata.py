"""Where the frames of a stored instance are, and conversion to uncompressed (pure: no I/O, no Flask).

WADO-RS frames (PS3.18 8.7.3.5.2, 10.4.1.1.4) are answered with byte-range reads of the
stored blob: at ingest :func:`locate_frames` records, for every frame, the byte ranges of
its value in the Part 10 file (one range for native pixel data; the fragments of an
encapsulated frame, PS3.5 A.4). So a viewer asking for slice 200 of a 500-frame enhanced
MR costs one small read, not a read of the whole object, on disk and on S3 alike.

:func:`to_native` re-encodes a whole instance in Explicit (or Implicit) VR Little Endian for
a client that asked for it explicitly (PS3.18 8.7.3.5.2); :func:`native_frame` decodes one
frame to the uncompressed little-endian bytes of ``application/octet-stream``.
"""

from __future__ import annotations

import bisect
import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.errors import PacsError
from pacs.part5 import BIG_ENDIAN, DEFLATED, EXPLICIT_LE, IMPLICIT_LE, ITEM, PIXEL_TAGS, SEQUENCE_DELIMITER
from pacs.part5 import LONG_VRS as _LONG_VRS
from pacs.part5 import UNDEFINED_LENGTH as _UNDEFINED

#: Native (not encapsulated) syntaxes whose frames can be read by byte range.
RANGE_NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, BIG_ENDIAN})
#: What we can re-encode a whole instance into (PS3.18 8.7.3.5.2 "uncompressed").
NATIVE_TARGETS = frozenset({EXPLICIT_LE, IMPLICIT_LE})


class ConversionError(PacsError):
    """The stored pixel data cannot be converted as asked (no decoder, or a damaged stream)."""


@dataclass(frozen=True)
class FrameMap:
    """Byte ranges of each frame in the blob (``ranges[i]`` for frame ``i + 1``)."""

    transfer_syntax: str
    #: True when the frames are native pixels (uncompressed, maybe big endian).
    native: bool
    ranges: tuple[tuple[tuple[int, int], ...], ...]
    #: Bytes per sample word for byte swapping native big-endian frames (1 = none).
    swap: int = 1

    @property
    def count(self) -> int:
        return len(self.ranges)

    def to_json(self) -> dict[str, Any]:
        if self.native and self.ranges:
            # Native frames are evenly spaced: three numbers instead of a list per frame.
            (first, size), = self.ranges[0]
            return {"ts": self.transfer_syntax, "native": [first, size, len(self.ranges)], "swap": self.swap}
        return {"ts": self.transfer_syntax, "frames": [[list(r) for r in f] for f in self.ranges]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FrameMap:
        if "native" in data:
            first, size, n = data["native"]
            ranges = tuple(((first + i * size, size),) for i in range(n))
            return cls(data["ts"], True, ranges, int(data.get("swap", 1)))
        return cls(data["ts"], False, tuple(tuple((int(o), int(n)) for o, n in f) for f in data["frames"]))


def frame_bytes(read_range: Callable[[int, int], bytes], fmap: FrameMap, number: int) -> bytes:
    """Frame ``number`` (1-based) as stored, read through ``read_range(offset, length)``.

    Native big-endian frames are byte-swapped: ``application/octet-stream`` is little endian.
    """
    data = b"".join(read_range(o, n) for o, n in fmap.ranges[number - 1])
    if fmap.native and fmap.swap > 1:
        data = np.frombuffer(data, dtype=f">u{fmap.swap}").astype(f"<u{fmap.swap}").tobytes()
    return data


def _header(raw: bytes | memoryview, pos: int, little: bool, explicit: bool) -> tuple[int, int, int]:
    """``(tag, length, value offset)`` of the element starting at ``pos``."""
    fmt = "<" if little else ">"
    group, elem = struct.unpack_from(fmt + "HH", raw, pos)
    if explicit and bytes(raw[pos + 4 : pos + 6]) in _LONG_VRS:
        return (group << 16) | elem, struct.unpack_from(fmt + "I", raw, pos + 8)[0], pos + 12
    if explicit:
        return (group << 16) | elem, struct.unpack_from(fmt + "H", raw, pos + 6)[0], pos + 8
    return (group << 16) | elem, struct.unpack_from(fmt + "I", raw, pos + 4)[0], pos + 8


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def native_frame_size(ds: Dataset) -> int | None:
    """Bytes per native frame (PS3.5 8.1.1), or None when frames are not byte aligned."""
    rows, cols, bits = _int(ds, "Rows"), _int(ds, "Columns"), _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        return None
    samples = _int(ds, "SamplesPerPixel", 1) or 1
    total_bits = rows * cols * samples * bits
    if str(ds.get("PhotometricInterpretation", "")).strip() in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        total_bits = total_bits * 2 // 3  # two chroma samples shared by two pixels (PS3.3 C.7.6.3.1.2)
    if total_bits % 8:
        return None  # bit-packed frames that do not start on a byte (BitsAllocated 1)
    return total_bits // 8


def locate_frames(raw: bytes | memoryview, pixel_pos: int, ds: Dataset, ts: str) -> FrameMap | None:
    """The byte ranges of every frame, from the pixel data element at ``pixel_pos``.

    None when ranges cannot be used (deflated data, frames not on byte boundaries,
    fragments that cannot be assigned to frames): the caller then reads the whole object.
    """
    if ts == DEFLATED or pixel_pos >= len(raw):
        return None
    little = ts != BIG_ENDIAN
    explicit = ts != IMPLICIT_LE
    tag, length, value_at = _header(raw, pixel_pos, little, explicit)
    if tag not in PIXEL_TAGS:
        return None
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if length != _UNDEFINED:
        size = native_frame_size(ds)
        if size is None or frames * size > length or value_at + length > len(raw):
            return None
        bits = _int(ds, "BitsAllocated", 8) or 8
        swap = bits // 8 if not little and bits in (16, 32, 64) else 1
        return FrameMap(ts, True, tuple(((value_at + i * size, size),) for i in range(frames)), swap)
    return _encapsulated(raw, value_at, frames, ts, ds)


def _encapsulated(raw: bytes | memoryview, pos: int, frames: int, ts: str, ds: Dataset) -> FrameMap | None:
    """Map fragments to frames (PS3.5 A.4): by the offset tables, one per frame, or all in one."""
    items: list[tuple[int, int, int]] = []  # (item offset, value offset, length)
    while True:
        tag, length, value_at = _header(raw, pos, True, False)  # items are always implicit LE
        if tag == SEQUENCE_DELIMITER:
            break
        if tag != ITEM or length == _UNDEFINED or value_at + length > len(raw):
            return None
        items.append((pos, value_at, length))
        pos = value_at + length
    if not items:
        return None
    (_, bot_at, bot_len), fragments = items[0], items[1:]
    if not fragments:
        return None
    first_item = fragments[0][0]
    starts: list[int] | None = None
    if "ExtendedOffsetTable" in ds:
        eot = bytes(ds.ExtendedOffsetTable)
        starts = list(struct.unpack(f"<{len(eot) // 8}Q", eot))
    elif bot_len:
        starts = list(struct.unpack_from(f"<{bot_len // 4}I", raw, bot_at))
    if starts is not None and len(starts) == frames:
        ranges: list[tuple[tuple[int, int], ...]] = []
        # Fragments are in file order: each frame's are a slice found by bisection (a
        # 2,000-frame instance must not cost frames x fragments comparisons at ingest).
        rel = [item - first_item for item, _, _ in fragments]
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else None
            lo = bisect.bisect_left(rel, start)
            hi = len(rel) if end is None else bisect.bisect_left(rel, end)
            chosen = tuple((v, n) for _, v, n in fragments[lo:hi])
            if not chosen:
                return None
            ranges.append(chosen)
        return FrameMap(ts, False, tuple(ranges))
    if len(fragments) == frames:
        return FrameMap(ts, False, tuple(((v, n),) for _, v, n in fragments))
    if frames == 1:
        return FrameMap(ts, False, (tuple((v, n) for _, v, n in fragments),))
    return None


def media_type_of(ts: str) -> str:
    """The media type of one frame in transfer syntax ``ts`` (PS3.18 Table 8.7.3-5)."""
    return FRAME_MEDIA_TYPES.get(ts, "application/octet-stream")


#: Compressed frame media types by transfer syntax (PS3.18 Table 8.7.3-5).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}
#: Older spellings clients still send (dicomweb-client offers both).
MEDIA_TYPE_ALIASES = {"image/x-jls": "image/jls", "image/x-dicom-rle": "image/dicom-rle"}


def can_decode(ts: str) -> bool:
    """True if pydicom has a working decoder for pixel data in ``ts``."""
    uid = UID(ts)
    if not uid.is_compressed:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def _decode_all(ds: Dataset) -> None:
    for _ in ds.iterall():  # convert every raw element, so a re-encoding writes them anew
        pass


def to_native_little_endian(ds: Dataset) -> Dataset:
    """Decompress (or byte-swap) ``ds`` in place to Explicit VR Little Endian; return it.

    The SOP Instance UID is kept: the pixels are the same (a lossy original stays marked
    by its Lossy Image Compression attributes, PS3.3 C.7.6.1.1.5).
    """
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if ts.is_compressed:
        ds.decompress(generate_instance_uid=False)
        return ds
    if not ts.is_little_endian:
        # Decode every element (raw big-endian values would be copied as they are), then
        # rewrite the pixels little endian, interleaved (pixel_array undoes planar config).
        _decode_all(ds)
        if "PixelData" in ds:
            arr = ds.pixel_array
            ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
            ds["PixelData"].VR = "OW" if ds.BitsAllocated > 8 else "OB"
            if ds.get("SamplesPerPixel", 1) > 1:
                ds.PlanarConfiguration = 0
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_original_encoding(False, True, ds.original_character_set)
    return ds


def to_native(raw: bytes, target: str = EXPLICIT_LE) -> bytes:
    """The Part 10 instance re-encoded in ``target`` (Explicit or Implicit VR Little Endian).

    Compressed pixel data is decoded (PhotometricInterpretation follows, e.g. YBR_FULL_422
    becomes RGB); the SOP Instance UID stays (the pixels are the same, PS3.3 C.7.6.1.1.5 keeps
    a lossy original marked). Raises :class:`ConversionError` when it cannot be done.
    """
    if target not in NATIVE_TARGETS:
        raise ConversionError(f"cannot encode in transfer syntax {target}")
    try:
        ds = dcmread(io.BytesIO(raw))
        ts = UID(ds.file_meta.TransferSyntaxUID)
        if ts.is_compressed and not can_decode(str(ts)):
            raise ConversionError(f"no decoder for {ts.name}")
        to_native_little_endian(ds)
        if str(ds.file_meta.TransferSyntaxUID) != target:
            _decode_all(ds)
            ds.file_meta.TransferSyntaxUID = UID(target)
            # Every element is decoded now, so it may be written in the new encoding.
            ds.set_original_encoding(target == IMPLICIT_LE, True, ds.original_character_set)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec errors come in many types
        raise ConversionError(f"cannot convert to {UID(target).name}: {exc}") from exc


def native_frame(raw: bytes, number: int) -> bytes:
    """Frame ``number`` (1-based) decoded to uncompressed little-endian bytes (interleaved colour)."""
    try:
        ds = dcmread(io.BytesIO(raw))
        ts = UID(ds.file_meta.TransferSyntaxUID)
        if ts.is_compressed:
            from pydicom.pixels.decoders.base import get_decoder

            if not can_decode(str(ts)):
                raise ConversionError(f"no decoder for {ts.name}")
            arr, _meta = get_decoder(ts).as_array(ds, index=number - 1, as_rgb=True)
        else:
            frames = _int(ds, "NumberOfFrames", 1) or 1
            arr = ds.pixel_array
            if frames > 1:
                arr = arr[number - 1]
        return np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("<"), copy=False)).tobytes()
    except ConversionError:
        raise
    except Exception as exc:  # noqa: BLE001 - codec errors come in many types
        raise ConversionError(f"cannot decode frame {number}: {exc}") from exc
