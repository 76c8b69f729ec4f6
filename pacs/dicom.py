"""DICOM helpers with no I/O: parse a Part 10 blob into index keys, decode text, fold names."""

from __future__ import annotations

import io
import unicodedata
from dataclasses import dataclass
from typing import Any

import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from pacs.errors import InvalidInstance

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
            number_of_frames=_int(ds, "NumberOfFrames") or (1 if "PixelData" in ds else 0),
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


def parse_part10(raw: bytes) -> tuple[FileDataset, str]:
    """Read and check a whole Part 10 blob; return the dataset and its transfer syntax.

    The whole file is parsed (not ``stop_before_pixels``) so a truncated value is
    caught here, before anything is written.
    """
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise InvalidInstance("not a DICOM Part 10 file (no DICM prefix, PS3.10 7.1)")
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=False)
        # Values are read lazily by some paths; touching every top-level element makes
        # truncation and bad lengths fail now.
        for _elem in ds.iterall():
            pass
    except InvalidDicomError as exc:
        raise InvalidInstance(f"unreadable DICOM: {exc}") from exc
    except (EOFError, ValueError, TypeError, KeyError, IndexError, OverflowError, NotImplementedError) as exc:
        raise InvalidInstance(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom raises many kinds on malformed input
        raise InvalidInstance(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID", "") or "")
    if not ts:
        raise InvalidInstance("file meta has no TransferSyntaxUID (0002,0010)")
    _check_pixel_length(ds, ts)
    return ds, ts


def _check_pixel_length(ds: Dataset, ts: str) -> None:
    """Native pixel data must hold Rows x Columns x Samples x Frames x bits (PS3.5 8.1.1)."""
    if ts not in NATIVE_SYNTAXES or "PixelData" not in ds:
        return
    elem = ds["PixelData"]
    value = elem.value
    if value is None:
        return
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits = _int(ds, "BitsAllocated")
    if not rows or not cols or not bits:
        raise InvalidInstance("pixel data without Rows/Columns/BitsAllocated")
    samples = _int(ds, "SamplesPerPixel") or 1
    frames = _int(ds, "NumberOfFrames") or 1
    expected = (rows * cols * samples * frames * bits + 7) // 8
    if _text(ds, "PhotometricInterpretation") in ("YBR_FULL_422", "YBR_PARTIAL_422"):
        expected = expected * 2 // 3
    if len(value) < expected:
        raise InvalidInstance(f"pixel data truncated: {len(value)} bytes, expected {expected}")


def uid_name(uid: str) -> str:
    """A readable name for a UID (for logs), or the UID itself."""
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001 - unknown UIDs are fine
        return uid
    return name or uid
