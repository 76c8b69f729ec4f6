"""DICOM helpers with no I/O: parse a Part 10 blob into index keys, decode text, fold names."""

from __future__ import annotations

import struct
import zlib
import unicodedata
from dataclasses import dataclass
from typing import Any

import pydicom
import pydicom.config
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from pacs.errors import InvalidInstance
from pacs.part5 import BIG_ENDIAN, DEFLATED, IMPLICIT_LE
from pacs.part5 import LONG_VRS as _VR32
from pacs.part5 import PIXEL_TAGS as _PIXEL_TAGS
from pacs.part5 import UNDEFINED_LENGTH as _UNDEFINED

# We store bytes as received and only read keys from them: value-format warnings from
# modalities (a UID with a leading zero, an over-long LO) are not ours to raise, and
# checking every value costs time on the receive path.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE

#: Transfer syntaxes whose pixel data is stored natively (not encapsulated), PS3.5 A.1-A.4.
NATIVE_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",  # Implicit VR Little Endian
        "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
        "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired)
        "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    }
)

# Characters NFKD does not split into base + mark (PS3.5 has no rule; this is a search key).
_FOLD_EXTRA = str.maketrans({"đ": "d", "Đ": "D", "ð": "d", "Ð": "D", "ø": "o", "Ø": "O", "ł": "l", "Ł": "L"})


def fold_text(value: str) -> str:
    """Accent- and case-insensitive search key: ``Nguyễn^Văn An`` -> ``NGUYEN VAN AN``.

    Vietnamese stacks up to two marks on a vowel (ễ = e + circumflex + tilde); NFKD
    splits them off so they can be dropped. Đ/đ is its own letter and maps to D.
    PN component separators (``^``, ``=``) become spaces so ``nguyen van*`` matches.
    """
    text = unicodedata.normalize("NFKD", value.translate(_FOLD_EXTRA))
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.replace("^", " ").replace("=", " ")
    return " ".join(text.upper().split())


def _text(ds: Dataset, keyword: str, limit: int = 256) -> str:
    """A text attribute as decoded ``str`` (multi-values joined by backslash), '' if absent."""
    elem = ds.get(keyword)
    if elem is None:
        return ""
    value: Any = elem.value if hasattr(elem, "value") else elem
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    return text.strip()[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0]
        return int(float(value))
    except (TypeError, ValueError, IndexError):
        return None


def _uid(ds: Dataset, keyword: str, *, required: bool) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\x00")
    if required and not value:
        raise InvalidInstance(f"missing {keyword}")
    if value and (len(value) > 64 or not all(c.isdigit() or c == "." for c in value)):
        # PS3.5 9.1: a UID is at most 64 characters of digits and dots.
        raise InvalidInstance(f"malformed {keyword}")
    return value


@dataclass(frozen=True)
class InstanceKeys:
    """Everything the index keeps about one instance, decoded to UTF-8 ``str``."""

    # Patient (PS3.3 C.7.1.1)
    patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    # Study (C.7.2.1)
    study_instance_uid: str
    study_date: str
    study_time: str
    accession_number: str
    study_description: str
    referring_physician_name: str
    study_id: str
    # Series (C.7.3.1)
    series_instance_uid: str
    modality: str
    series_number: int | None
    series_description: str
    body_part_examined: str
    # Instance (C.12.1, C.7.6.3)
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    transfer_syntax_uid: str
    rows: int | None
    columns: int | None
    number_of_frames: int

    @classmethod
    def from_dataset(cls, ds: Dataset, transfer_syntax_uid: str) -> InstanceKeys:
        """Extract the keys; ``InvalidInstance`` when a required UID is missing or malformed."""
        return cls(
            patient_id=_text(ds, "PatientID", 64),
            patient_name=_text(ds, "PatientName", 324),
            patient_birth_date=_text(ds, "PatientBirthDate", 8),
            patient_sex=_text(ds, "PatientSex", 16),
            study_instance_uid=_uid(ds, "StudyInstanceUID", required=True),
            study_date=_text(ds, "StudyDate", 8),
            study_time=_text(ds, "StudyTime", 16),
            accession_number=_text(ds, "AccessionNumber", 16),
            study_description=_text(ds, "StudyDescription", 64),
            referring_physician_name=_text(ds, "ReferringPhysicianName", 324),
            study_id=_text(ds, "StudyID", 16),
            series_instance_uid=_uid(ds, "SeriesInstanceUID", required=True),
            modality=_text(ds, "Modality", 16),
            series_number=_int(ds, "SeriesNumber"),
            series_description=_text(ds, "SeriesDescription", 64),
            body_part_examined=_text(ds, "BodyPartExamined", 16),
            sop_instance_uid=_uid(ds, "SOPInstanceUID", required=True),
            sop_class_uid=_uid(ds, "SOPClassUID", required=True),
            instance_number=_int(ds, "InstanceNumber"),
            transfer_syntax_uid=transfer_syntax_uid,
            rows=_int(ds, "Rows"),
            columns=_int(ds, "Columns"),
            number_of_frames=_int(ds, "NumberOfFrames") or (1 if "Rows" in ds else 0),
        )

    @classmethod
    def from_part10(cls, raw: bytes) -> InstanceKeys:
        """Parse a Part 10 file (PS3.10 7.1) and check it is whole; ``InvalidInstance`` if not."""
        return cls.from_dataset(*parse_part10(raw))

    @property
    def patient_name_folded(self) -> str:
        return fold_text(self.patient_name)

    @property
    def referring_physician_folded(self) -> str:
        return fold_text(self.referring_physician_name)


def parse_part10(raw: bytes) -> tuple[Dataset, str]:
    """Check a whole Part 10 blob and decode only the attributes the index needs.

    One pass over the element headers (PS3.5 7.1) both refuses a dataset that is cut
    short (pydicom tolerates that) and picks out the top-level elements in
    :data:`INDEXED_TAGS`; pydicom then decodes just those (character sets included).
    Nothing is copied for the pixel data, so this costs the same for 5 KB and 500 MB.
    """
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no DICM prefix, PS3.10 7.1)")
    meta: dict[int, RawDataElement] = {}
    try:
        pos = _collect(raw, 132, "<", True, meta, stop_group=0x0002)
    except (struct.error, IndexError) as exc:
        raise InvalidInstance("unreadable file meta information") from exc
    ts_elem = meta.get(0x00020010)
    if ts_elem is None or not ts_elem.value:
        raise InvalidInstance("file meta has no TransferSyntaxUID (0002,0010)")
    ts = bytes(ts_elem.value).decode("ascii", "replace").strip(" \x00")
    data, start = raw, pos
    if ts == DEFLATED:
        # Deflated (PS3.5 A.5): a raw deflate stream that must reach its final block.
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(raw[pos:])
        except zlib.error as exc:
            raise InvalidInstance(f"deflated dataset is corrupt: {exc}") from exc
        if not inflater.eof:
            raise InvalidInstance("deflated dataset truncated: the stream ends early")
        start = 0
    little = ts != BIG_ENDIAN
    explicit = ts != IMPLICIT_LE
    elems: dict[int, RawDataElement] = {}
    try:
        end = _collect(data, start, "<" if little else ">", explicit, elems)
    except (struct.error, IndexError) as exc:
        raise InvalidInstance("dataset truncated or malformed") from exc
    if end != len(data):
        raise InvalidInstance("dataset truncated: the last element is cut short")
    ds = Dataset({BaseTag(t): e for t, e in elems.items() if t not in _PIXEL_TAGS})
    ds.set_original_encoding(not explicit, little)
    _check_pixels(ds, elems, ts)
    return ds, ts


#: Top-level elements the index reads (PS3.3 C.7, C.12); everything else is only walked.
INDEXED_TAGS = frozenset({
    0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080030, 0x00080050, 0x00080060,
    0x00080090, 0x00081030, 0x0008103E, 0x00100010, 0x00100020, 0x00100030, 0x00100040,
    0x00180015, 0x0020000D, 0x0020000E, 0x00200010, 0x00200011, 0x00200013,
    0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100,
})


def _collect(
    raw: bytes, pos: int, fmt: str, explicit: bool, out: dict[int, RawDataElement],
    stop_group: int | None = None,
) -> int:
    """Walk top-level elements from ``pos``; keep the indexed ones (and pixel headers) in ``out``."""
    end = len(raw)
    unpack = struct.unpack_from
    little = fmt == "<"
    while pos < end:
        if end - pos < 8:
            raise InvalidInstance(f"dataset truncated at byte {pos}")
        group, elem = unpack(fmt + "HH", raw, pos)
        if stop_group is not None and group != stop_group:
            return pos
        tag = (group << 16) | elem
        nxt = _walk_element(raw, pos, fmt, explicit)
        if tag in INDEXED_TAGS or tag in _PIXEL_TAGS or stop_group is not None:
            vr: str | None = None
            if explicit and group != 0xFFFE:
                vr_bytes = raw[pos + 4 : pos + 6]
                vr = vr_bytes.decode("ascii", "replace")
                if vr_bytes in _VR32:
                    length = unpack(fmt + "I", raw, pos + 8)[0]
                    value_at = pos + 12
                else:
                    length = unpack(fmt + "H", raw, pos + 6)[0]
                    value_at = pos + 8
            else:
                length = unpack(fmt + "I", raw, pos + 4)[0]
                value_at = pos + 8
            if tag in _PIXEL_TAGS:
                # Where it is and how long; the value itself is never copied here.
                out[tag] = RawDataElement(BaseTag(tag), vr, length, None, value_at, not explicit, little)
            elif length != _UNDEFINED:
                out[tag] = RawDataElement(
                    BaseTag(tag), vr, length, raw[value_at : value_at + length], value_at,
                    not explicit, little,
                )
        pos = nxt
    return pos


def _walk_element(raw: bytes, pos: int, fmt: str, explicit: bool) -> int:
    """Return the offset just past the element at ``pos`` (items and sequences walked)."""
    end = len(raw)
    if pos + 8 > end:
        raise InvalidInstance(f"dataset truncated at byte {pos}")
    group, elem = struct.unpack_from(fmt + "HH", raw, pos)
    if group == 0xFFFE:  # item, item delimiter, sequence delimiter: implicit-style header
        length = struct.unpack_from(fmt + "I", raw, pos + 4)[0]
        pos += 8
    elif explicit:
        vr = raw[pos + 4 : pos + 6]
        if vr in _VR32:
            if pos + 12 > end:
                raise InvalidInstance(f"dataset truncated at byte {pos}")
            length = struct.unpack_from(fmt + "I", raw, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from(fmt + "H", raw, pos + 6)[0]
            pos += 8
    else:
        length = struct.unpack_from(fmt + "I", raw, pos + 4)[0]
        pos += 8
    if length == _UNDEFINED:
        # Undefined length: a sequence or encapsulated pixel data, ended by (FFFE,E0DD);
        # an item ends with (FFFE,E00D) (PS3.5 7.5).
        closing = 0xE00D if group == 0xFFFE else 0xE0DD
        while True:
            if pos + 8 > end:
                raise InvalidInstance("dataset truncated inside a sequence or encapsulated pixel data")
            g, e = struct.unpack_from(fmt + "HH", raw, pos)
            if g == 0xFFFE and e == closing:
                return pos + 8
            # Inside an item: its elements; inside a sequence or pixel data: items/fragments.
            pos = _walk_element(raw, pos, fmt, explicit)
    if pos + length > end:
        raise InvalidInstance(
            f"dataset truncated: element ({group:04X},{elem:04X}) needs {length} bytes, "
            f"{end - pos} left"
        )
    return pos + length


def _check_pixels(ds: Dataset, elems: dict[int, RawDataElement], ts: str) -> None:
    """Image attributes need pixel data, and native pixel data must be whole (PS3.5 8.1.1)."""
    pixel = elems.get(0x7FE00010)
    if 0x00280010 in elems and not any(t in elems for t in _PIXEL_TAGS):
        raise InvalidInstance("image attributes without pixel data (truncated?)")
    if pixel is None or ts not in NATIVE_SYNTAXES:
        return
    if pixel.length == _UNDEFINED:
        raise InvalidInstance("native pixel data with undefined length (encapsulation needs a compressed syntax)")
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        raise InvalidInstance("pixel data without Rows/Columns/BitsAllocated")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if _text(ds, "PhotometricInterpretation") in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        expected = expected * 2 // 3
    if pixel.length < expected:
        raise InvalidInstance(f"pixel data truncated: {pixel.length} bytes, expected {expected}")
