"""QIDO-RS (PS3.18 10.6): query parameters to a C-FIND query, index rows to DICOM JSON (pure: no Flask).

The matching is the C-FIND engine's (:mod:`pacs.store.query`): the same wildcards, ranges,
UID lists and accent-insensitive person names. This module only translates:

- ``{attributeID}={value}`` pairs, where attributeID is a keyword or eight hex digits
  (PS3.18 8.3.4.1), into FindQuery keys; UID lists may be comma- or backslash-separated
  (PS3.18 8.3.4.6.1);
- ``includefield`` (repeated or comma-separated, keywords, tags or ``all``; 8.3.4.3),
  ``limit`` / ``offset`` (8.3.4.4), ``fuzzymatching`` (8.3.4.5);
- each result row into a DICOM JSON object (PS3.18 F.2) with RetrieveURL (0008,1190).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import keyword_for_tag

from pacs.dicomjson import attribute, parse_tag, sorted_object
from pacs.errors import InvalidQuery
from pacs.store.query import ATTRIBUTES, UNIQUE_KEY, FindQuery, Level, Model

#: Parameters that are not attribute matches (PS3.18 8.3.4).
CONTROL = frozenset({"includefield", "limit", "offset", "fuzzymatching", "accept", "charset"})

#: Attributes returned by default (PS3.18 Tables 10.6.3-3, -4, -5), as far as the index holds them.
DEFAULTS: dict[Level, tuple[str, ...]] = {
    Level.STUDY: ("StudyDate", "StudyTime", "AccessionNumber", "ModalitiesInStudy",
                  "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate",
                  "PatientSex", "StudyInstanceUID", "StudyID", "StudyDescription",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("Modality", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "BodyPartExamined", "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns",
                  "NumberOfFrames"),
}


@dataclass(frozen=True)
class Search:
    """A checked QIDO-RS request."""

    query: FindQuery
    limit: int | None
    offset: int
    #: Attributes asked for with includefield that the index does not hold (tags as 8 hex digits).
    extra_fields: tuple[str, ...] = ()
    include_all: bool = False
    #: Matching keys the archive cannot match on (answered with a Warning header, PS3.18 8.3.4.x).
    unsupported: tuple[str, ...] = ()
    warnings: list[str] = field(default_factory=list)


def _int_param(name: str, values: Sequence[str], low: int) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise InvalidQuery(f"{name} may be given once")
    text = values[0].strip()
    if not text.isdigit() or int(text) < low:
        raise InvalidQuery(f"{name} must be an integer >= {low}, not {text!r}", name)
    return int(text)


def parse(
    params: Mapping[str, Sequence[str]], level: Level, *, path: Mapping[str, str] | None = None,
    max_limit: int = 0,
) -> Search:
    """Check QIDO-RS parameters (already percent-decoded) for a search at ``level``.

    ``path`` holds the UIDs of the URL (``/studies/{study}/series``); the search is
    relational when a higher level's UID is not in the path (``/series``, ``/instances``).
    ``max_limit`` caps the page size (0 = no cap). Raises ``InvalidQuery`` (HTTP 400).
    """
    path = dict(path or {})
    keys: dict[str, str] = dict(path)
    unsupported: list[str] = []
    extra: list[str] = []
    include_all = False
    for name, values in params.items():
        lname = name.lower()
        if lname == "includefield":
            for value in values:
                for item in value.split(","):
                    item = item.strip()
                    if not item:
                        continue
                    if item.lower() == "all":
                        include_all = True
                        continue
                    tag = parse_tag(item)
                    keyword = keyword_for_tag(tag) if tag is not None else ""
                    if tag is None or not keyword:
                        raise InvalidQuery(f"includefield: unknown attribute {item!r}", "includefield")
                    if keyword in ATTRIBUTES:
                        keys.setdefault(keyword, "")
                    else:
                        extra.append(f"{int(tag):08X}")
            continue
        if lname in CONTROL:
            continue
        tag = parse_tag(name)
        keyword = keyword_for_tag(tag) if tag is not None else ""
        if tag is None or not keyword:
            raise InvalidQuery(f"unknown query parameter or attribute {name!r}", name)
        if len(values) > 1:
            raise InvalidQuery(f"{keyword} may be given once (use a UID list or a range)", keyword)
        if keyword in path:
            raise InvalidQuery(f"{keyword} is given in the URL path", keyword)
        attr = ATTRIBUTES.get(keyword)
        if attr is None or attr.level.value > level.value:
            unsupported.append(keyword)
            continue
        value = values[0]
        if attr.kind == "uid":
            value = value.replace(",", "\\")  # PS3.18 8.3.4.6.1: comma-separated UID lists
        keys[keyword] = value
    fuzzy = params.get("fuzzymatching", [])
    for value in fuzzy:
        if value.strip().lower() not in ("true", "false"):
            raise InvalidQuery(f"fuzzymatching must be true or false, not {value!r}", "fuzzymatching")
    limit = _int_param("limit", params.get("limit", []), 1)
    offset = _int_param("offset", params.get("offset", []), 0) or 0
    if max_limit and (limit is None or limit > max_limit):
        limit = max_limit
    for keyword in _returned(level, path, include_all):
        keys.setdefault(keyword, "")
    relational = any(UNIQUE_KEY[lv] not in path for lv in (Level.STUDY, Level.SERIES)
                     if lv.value < level.value)
    query = FindQuery.parse(level, Model.STUDY_ROOT, keys, relational=relational)
    warnings = []
    if unsupported:
        # PS3.18 8.3.4.x: matching on attributes the origin server does not support is reported.
        warnings.append("The following attributes are not supported for matching: " + ", ".join(unsupported))
    return Search(query, limit, offset, tuple(dict.fromkeys(extra)), include_all, tuple(unsupported),
                  warnings)


def _returned(level: Level, path: Mapping[str, str], include_all: bool) -> list[str]:
    """The default attributes of the level, plus those of the levels above it for relational searches."""
    out = list(DEFAULTS[level])
    if level.value >= Level.SERIES.value:
        out.append("StudyInstanceUID")
        if "StudyInstanceUID" not in path:
            out += DEFAULTS[Level.STUDY]
    if level is Level.IMAGE:
        out.append("SeriesInstanceUID")
        if "SeriesInstanceUID" not in path:
            out += DEFAULTS[Level.SERIES]
    if include_all:
        out += [k for k, a in ATTRIBUTES.items() if a.level.value <= level.value]
    return list(dict.fromkeys(out))


def retrieve_url(base: str, row: Mapping[str, Any], level: Level) -> str:
    """The WADO-RS URL of a result (PS3.18 10.6.3: RetrieveURL (0008,1190))."""
    url = f"{base}/dicomweb/studies/{row['StudyInstanceUID']}"
    if level.value >= Level.SERIES.value:
        url += f"/series/{row['SeriesInstanceUID']}"
    if level is Level.IMAGE:
        url += f"/instances/{row['SOPInstanceUID']}"
    return url


def result_json(row: Mapping[str, Any], level: Level, base: str) -> dict[str, Any]:
    """One result row as a DICOM JSON object (UTF-8, PN as objects, IS/US as numbers)."""
    out: dict[str, Any] = {}
    for keyword, value in row.items():
        if keyword.startswith("_"):
            continue
        tag, js = attribute(keyword, "" if value is None else value)
        out[tag] = js
    out["00080005"] = {"vr": "CS", "Value": ["ISO_IR 192"]}  # the JSON text is UTF-8
    out["00080056"] = {"vr": "CS", "Value": ["ONLINE"]}  # InstanceAvailability
    out["00081190"] = {"vr": "UR", "Value": [retrieve_url(base, row, level)]}
    return sorted_object(out)
