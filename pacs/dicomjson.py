"""DICOM JSON Model (PS3.18 Annex F.2) from pydicom data sets and index values (pure: no I/O, no Flask).

Why our own encoder rather than ``Dataset.to_json_dict``: we need BulkDataURIs that name
where a value is (``bulkdata/7FE00010``, ``bulkdata/00540016/1/00181072``) so that they
resolve on our server, a value that pydicom cannot convert must cost one element rather
than the whole answer, and it runs once per stored instance at ingest, so it should be cheap.

Rules applied (PS3.18 F.2):

- an object keyed by the tag as eight upper-case hex digits, in tag order (F.2.1.1);
- ``"vr"`` always; ``"Value"`` is absent for an empty attribute and an empty value inside a
  multi-valued one is ``null`` (F.2.5);
- PN values are objects with ``Alphabetic``, ``Ideographic`` and ``Phonetic`` strings (F.2.2);
- IS, DS, and the binary numbers (US, SS, UL, SL, FL, FD, SV, UV) are JSON numbers (F.2.3.1);
  values JSON cannot hold exactly (NaN, an SV/UV beyond 2**53) become ``null`` / strings;
- AT values are the tag as eight hex digits (F.2.3.1);
- OB, OD, OF, OL, OV, OW and UN values are ``InlineBinary`` (base64) or, when large, a
  ``BulkDataURI`` (F.2.6, F.2.7);
- the text is UTF-8, so a SpecificCharacterSet in the data set becomes ``ISO_IR 192``.
"""

from __future__ import annotations

import base64
import logging
import math
import struct
from collections.abc import Callable, Iterable
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import PersonName

log = logging.getLogger(__name__)

MEDIA_TYPE = "application/dicom+json"

#: Binary VRs: inline base64 or bulk data (PS3.18 F.2.7).
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
#: Binary values longer than this many bytes go to a BulkDataURI instead of InlineBinary.
BULK_THRESHOLD = 1024
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "SV", "UV"})
_FLOAT_VRS = frozenset({"FL", "FD"})
#: Text VRs that hold one value which may contain a backslash (PS3.5 6.2).
_SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_MAX_EXACT = 2**53
_CHARSET = 0x00080005
#: Pydicom's names for VRs it could not resolve, and the one we write (PS3.5 Table 6-1 footnotes).
_AMBIGUOUS = {"US or SS": "US", "US or OW": "US", "US or SS or OW": "US", "OB or OW": "OW",
              "SS or US": "US"}

#: ``(tag_path) -> URI`` for a bulk value; ``tag_path`` is like ``7FE00010`` or ``00540016/1/00181072``.
BulkURI = Callable[[str], str]


def tag_hex(tag: int) -> str:
    return f"{int(tag):08X}"


def parse_tag(text: str) -> BaseTag | None:
    """A keyword (``PatientName``) or eight hex digits (``00100010``) as a tag; None if neither."""
    text = text.strip()
    if len(text) == 8:
        try:
            return Tag(int(text, 16))
        except ValueError:
            pass
    number = tag_for_keyword(text)
    return Tag(number) if number is not None else None


def person_name(value: str) -> dict[str, str] | None:
    """``Alphabetic=Ideographic=Phonetic`` as a PN object (PS3.18 F.2.2); None when empty."""
    groups = str(value).split("=")
    out = {name: text for name, text in zip(("Alphabetic", "Ideographic", "Phonetic"), groups) if text}
    return out or None


def _number(value: Any, vr: str) -> int | float | str | None:
    if value is None or value == "":
        return None
    try:
        if vr in _INT_VRS or vr == "IS":
            number: int | float = int(value) if vr != "IS" else int(float(value))
            return str(number) if abs(number) > _MAX_EXACT else number
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None  # e.g. a malformed IS/DS read leniently: no JSON number for it
    if not math.isfinite(number):
        return None  # JSON has no NaN or Infinity
    if vr == "DS" and number.is_integer() and abs(number) < _MAX_EXACT and "." not in str(value).lower() \
            and "e" not in str(value).lower():
        return int(number)
    return number


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, MultiValue)):
        return list(value)
    return [value]


def _string(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    text = str(value)
    return text if text != "" else None


def value_json(vr: str, value: Any) -> dict[str, Any]:
    """``{"vr": vr, "Value": [...]}`` for a non-binary, non-sequence value (absent Value if empty).

    ``value`` is a pydicom value (str, number, PersonName, MultiValue) or, for values
    from the index, a str holding backslash-separated values, or a list.
    """
    vr = _AMBIGUOUS.get(vr, vr)
    out: dict[str, Any] = {"vr": vr}
    if isinstance(value, str) and vr not in _SINGLE_TEXT_VRS:
        items: list[Any] = value.split("\\") if value else []
    else:
        items = _values(value)
    if vr == "PN":
        converted: list[Any] = [person_name(_pn_text(v)) for v in items]
    elif vr in _INT_VRS or vr in _FLOAT_VRS or vr in ("IS", "DS"):
        converted = [_number(v, vr) for v in items]
    elif vr == "AT":
        converted = [tag_hex(v) if v is not None and v != "" else None for v in items]
    else:
        converted = [_string(v) for v in items]
    if any(v is not None for v in converted):
        out["Value"] = converted
    return out


def _pn_text(value: Any) -> str:
    if isinstance(value, PersonName):
        comps = value.components  # decoded with the data set's character sets
        return "=".join(comps)
    return _string(value) or ""


def element_json(
    elem: DataElement, path: str, bulk_uri: BulkURI | None, threshold: int, codec: str | None = "ascii",
) -> dict[str, Any]:
    """One data element as DICOM JSON; ``path`` is its tag path (for a BulkDataURI)."""
    vr = _AMBIGUOUS.get(elem.VR, elem.VR)
    if vr == "SQ":
        items = [dataset_json(item, bulk_uri=bulk_uri, threshold=threshold, prefix=f"{path}/{i}/",
                              codec=codec)
                 for i, item in enumerate(elem.value or [], start=1)]
        return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
    if vr in BINARY_VRS:
        raw = elem.value
        if raw is None or len(raw) == 0:
            return {"vr": vr}
        if isinstance(raw, (list, tuple, MultiValue)):  # e.g. an OW read as a list of fragments
            raw = b"".join(bytes(x) for x in raw)
        if bulk_uri is not None and len(raw) > threshold:
            return {"vr": vr, "BulkDataURI": bulk_uri(path)}
        return {"vr": vr, "InlineBinary": base64.b64encode(bytes(raw)).decode("ascii")}
    return value_json(vr, elem.value)


#: VRs whose values are ASCII whatever the character set (PS3.5 6.1.2.3): decoded here, fast.
_ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI", "IS", "DS"})
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "SV": "q", "UV": "Q"}


#: Character sets a text value can be decoded with by Python alone (PS3.5 6.1.2.5.1, single-byte
#: without code extensions, or UTF-8); others go through pydicom.
_CODECS = {"": "ascii", "ISO_IR 6": "ascii", "ISO_IR 100": "latin_1", "ISO_IR 192": "utf_8",
           "ISO_IR 101": "iso8859_2", "ISO_IR 144": "iso8859_5", "ISO_IR 148": "iso8859_9"}
_TEXT_VRS = frozenset({"SH", "LO", "UC", "PN", "ST", "LT", "UT"})


def codec_of(ds: Dataset) -> str | None:
    """The Python codec of ``ds``'s SpecificCharacterSet when it is a simple one, else None."""
    raw = ds.get_item(_CHARSET)
    if raw is None:
        return "ascii"
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, (list, tuple, MultiValue)):
        value = "\\".join(str(v) for v in value)
    return _CODECS.get(str(value or "").strip(" \x00"))


def _raw_json(
    raw: RawDataElement, path: str, bulk_uri: BulkURI | None, threshold: int, codec: str | None = None,
) -> dict[str, Any] | None:
    """DICOM JSON straight from an unconverted element, for the common VRs; None = use pydicom.

    Converting through pydicom costs ~20 us an element (value objects, validation hooks);
    ASCII strings, binary numbers and binary blobs need none of it.
    """
    vr = raw.VR
    if vr is None or raw.value is None or raw.length == 0xFFFFFFFF:
        return None
    value = raw.value
    if vr in _ASCII_VRS:
        text = value.decode("ascii", "replace").rstrip("\x00 ")
        parts = [p.strip(" \x00") for p in text.split("\\")] if text else []
        return value_json(vr, parts if parts else None)
    if vr in _TEXT_VRS and codec is not None:
        try:
            text = value.decode(codec)
        except UnicodeDecodeError:
            return None
        text = text.rstrip("\x00 ")
        if vr in ("ST", "LT", "UT"):
            return value_json(vr, text if text else None)
        parts = [p.strip(" ") if vr != "PN" else p.rstrip(" ") for p in text.split("\\")] if text else []
        return value_json(vr, parts if parts else None)
    fmt = _STRUCT.get(vr)
    if fmt is not None:
        size = struct.calcsize("<" + fmt)
        if len(value) % size:
            return None
        numbers = struct.unpack(("<" if raw.is_little_endian else ">") + fmt * (len(value) // size), value)
        return value_json(vr, list(numbers))
    if vr in BINARY_VRS and (raw.is_little_endian or vr in ("OB", "UN")):
        if not value:
            return {"vr": vr}
        if bulk_uri is not None and len(value) > threshold:
            return {"vr": vr, "BulkDataURI": bulk_uri(path)}
        return {"vr": vr, "InlineBinary": base64.b64encode(value).decode("ascii")}
    return None


def dataset_json(
    ds: Dataset, *, bulk_uri: BulkURI | None = None, threshold: int = BULK_THRESHOLD, prefix: str = "",
    skip_groups: Iterable[int] = (), codec: str | None = "ascii",
) -> dict[str, Any]:
    """A data set as a DICOM JSON object (PS3.18 F.2), tags in order.

    Elements of the groups in ``skip_groups`` and group lengths (gggg,0000) are left out.
    An element pydicom cannot convert is left out and logged by tag (never by value).
    ``codec`` is the character set inherited from the enclosing data set (PS3.5 6.1.2.5.2:
    a sequence item without its own SpecificCharacterSet uses its parent's).
    """
    skipped = set(skip_groups)
    if _CHARSET in ds:
        codec = codec_of(ds)
    out: dict[str, Any] = {}
    for tag in sorted(ds.keys()):
        if tag.element == 0 or tag.group in skipped:
            continue
        key = tag_hex(tag)
        try:
            raw = ds.get_item(tag)
            if isinstance(raw, RawDataElement) and tag != _CHARSET:
                fast = _raw_json(raw, prefix + key, bulk_uri, threshold, codec)
                if fast is not None:
                    out[key] = fast
                    continue
            elem = ds[tag]
            if tag == _CHARSET and elem.value:
                out[key] = {"vr": "CS", "Value": ["ISO_IR 192"]}  # the JSON text is UTF-8
                continue
            out[key] = element_json(elem, prefix + key, bulk_uri, threshold, codec)
        except Exception as exc:  # noqa: BLE001 - one malformed element must not lose the rest
            log.debug("element (%04X,%04X) left out of DICOM JSON: %s", tag.group, tag.element, exc)
    return out


def attribute(keyword: str, value: Any) -> tuple[str, dict[str, Any]]:
    """``(tag, json)`` for an attribute named by keyword with a value from the index."""
    number = tag_for_keyword(keyword)
    if number is None:
        raise KeyError(keyword)
    return tag_hex(number), value_json(dictionary_VR(number), value)


def sorted_object(items: dict[str, Any]) -> dict[str, Any]:
    """The same object with its tags in ascending order (PS3.18 F.2.1.1)."""
    return {k: items[k] for k in sorted(items)}
