"""DICOM JSON (PS3.18 F.2): our encoder against the standard's rules and pydicom's own reader."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from pacs.dicomjson import attribute, dataset_json, parse_tag, person_name, value_json
from pacs.store.metadata import absolute, build_entry

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dicom"


def test_person_names_are_objects_with_component_groups() -> None:
    assert person_name("Nguyễn^Văn An") == {"Alphabetic": "Nguyễn^Văn An"}
    assert person_name("Yamada^Tarou=山田^太郎=やまだ^たろう") == {
        "Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    assert person_name("=山田^太郎") == {"Ideographic": "山田^太郎"}
    assert person_name("") is None


def test_values_by_vr() -> None:
    assert value_json("IS", "3") == {"vr": "IS", "Value": [3]}
    assert value_json("DS", "1.5\\2") == {"vr": "DS", "Value": [1.5, 2]}
    assert value_json("US", [512]) == {"vr": "US", "Value": [512]}
    assert value_json("CS", "ORIGINAL\\\\AXIAL") == {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}
    assert value_json("LT", "a\\b") == {"vr": "LT", "Value": ["a\\b"]}  # one text value, backslash kept
    assert value_json("LO", "") == {"vr": "LO"}  # present but empty: no Value (F.2.5)
    assert value_json("FD", [float("nan")]) == {"vr": "FD"}  # JSON has no NaN
    assert value_json("SV", [2**60]) == {"vr": "SV", "Value": [str(2**60)]}
    assert value_json("AT", [0x00100010]) == {"vr": "AT", "Value": ["00100010"]}
    assert value_json("IS", "x") == {"vr": "IS"}  # malformed, read leniently: no number to give


def test_index_attributes_by_keyword() -> None:
    assert attribute("PatientName", "Trần^Thị B") == ("00100010", {"vr": "PN", "Value": [{"Alphabetic": "Trần^Thị B"}]})
    assert attribute("ModalitiesInStudy", ["CT", "MR"]) == ("00080061", {"vr": "CS", "Value": ["CT", "MR"]})
    assert attribute("NumberOfStudyRelatedInstances", 12)[1] == {"vr": "IS", "Value": [12]}
    with pytest.raises(KeyError):
        attribute("NoSuchKeyword", "x")


def test_parse_tag_takes_keywords_and_hex() -> None:
    assert parse_tag("PatientName") == 0x00100010
    assert parse_tag("0020000d") == 0x0020000D
    assert parse_tag("nonsense") is None and parse_tag("0010001") is None


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Đặng^Thị Lan"
    ds.add_new(0x00091010, "OB", b"\x01\x02\x03")  # private, small: inline
    ds.add_new(0x00091011, "OB", bytes(4000))  # private, large: bulk data
    item = Dataset()
    item.add_new(0x00181072, "OB", bytes(2000))
    item.CodeMeaning = "chest"
    ds.add_new(0x00540016, "SQ", Sequence([Dataset(), item]))
    ds.add_new(0x00081140, "SQ", Sequence())
    ds.add_new(0x00280000, "UL", 10)  # a group length: left out
    return ds


def test_dataset_json_inline_and_bulk_with_paths() -> None:
    out = dataset_json(_dataset(), bulk_uri=lambda path: "bulk/" + path)
    assert list(out) == sorted(out)
    assert out["00080005"] == {"vr": "CS", "Value": ["ISO_IR 192"]}
    assert out["00100010"]["Value"] == [{"Alphabetic": "Đặng^Thị Lan"}]
    assert base64.b64decode(out["00091010"]["InlineBinary"]) == b"\x01\x02\x03"
    assert out["00091011"] == {"vr": "OB", "BulkDataURI": "bulk/00091011"}
    items = out["00540016"]["Value"]
    assert items[0] == {} and items[1]["00181072"] == {"vr": "OB", "BulkDataURI": "bulk/00540016/2/00181072"}
    assert out["00081140"] == {"vr": "SQ"}
    assert "00280000" not in out


def test_charset_becomes_utf8_and_values_are_decoded(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "Müller^Jörg"
    ds.StudyDescription = "Thorax ÄÖÜ"
    path = tmp_path / "latin1.dcm"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.save_as(path, enforce_file_format=True)
    assert "Müller".encode("latin-1") in path.read_bytes()  # really stored as Latin-1
    out = dataset_json(pydicom.dcmread(path))
    assert out["00080005"]["Value"] == ["ISO_IR 192"]
    assert out["00100010"]["Value"] == [{"Alphabetic": "Müller^Jörg"}]
    assert out["00081030"]["Value"] == ["Thorax ÄÖÜ"]


@pytest.mark.parametrize("path", sorted(SAMPLES.rglob("*.dcm")), ids=lambda p: p.name)
def test_pydicom_reads_back_every_sample(path: Path) -> None:
    """pydicom's reader (not ours) gets the same values back from our JSON of each sample."""
    raw = path.read_bytes()
    entry = build_entry(raw)
    text = absolute(entry.json_bytes(), "/i").decode("utf-8")
    obj = json.loads(text)
    pixel = [k for k in ("7FE00010", "7FE00008", "7FE00009") if k in obj]
    for key in pixel:
        assert obj[key]["BulkDataURI"] == f"/i/bulkdata/{key}"
    assert obj["00083002"]["Value"] == [str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)]
    back = Dataset.from_json(obj, bulk_data_uri_handler=lambda *a: b"")
    original = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in ("SOPInstanceUID", "PatientName", "StudyDate", "Rows", "Columns", "Modality",
                    "ImageType", "PixelSpacing", "WindowCenter", "InstanceNumber"):
        if keyword in original and original[keyword].value not in (None, ""):
            assert _norm(back[keyword]) == _norm(original[keyword]), keyword


def _norm(elem: pydicom.DataElement) -> object:
    """A comparable form: numbers as floats (DS "0.000" and 0.0 are the same value)."""
    values = elem.value if elem.VM > 1 else [elem.value]
    if elem.VR in ("DS", "IS", "US", "SS", "FL", "FD"):
        return [float(v) for v in values]
    return [str(v) for v in values]


def test_absolute_only_touches_bulk_data_uris() -> None:
    obj = {"00081030": {"vr": "LO", "Value": ['"BulkDataURI":"x']},
           "7FE00010": {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}}
    text = json.dumps(obj, separators=(",", ":")).encode()
    out = json.loads(absolute(text, 'https://pacs.example/p"q/dicomweb/studies/1'))
    assert out["00081030"]["Value"] == ['"BulkDataURI":"x']  # a value that looks like the key: untouched
    assert out["7FE00010"]["BulkDataURI"] == 'https://pacs.example/p"q/dicomweb/studies/1/bulkdata/7FE00010'
