"""Key extraction, character sets and accent folding."""

import io

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs.dicom import InstanceKeys, fold_text
from pacs.errors import InvalidInstance


def part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def minimal(**attrs: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize(
    ("name", "folded"),
    [
        ("Nguyễn^Văn An", "NGUYEN VAN AN"),
        ("NGUYEN^VAN AN", "NGUYEN VAN AN"),
        ("nguyen van an", "NGUYEN VAN AN"),
        ("Đặng^Minh Châu", "DANG MINH CHAU"),
        ("đỗ^thị  hương", "DO THI HUONG"),
        ("Trần^Thị Bình", "TRAN THI BINH"),
        ("Müller^Jürgen", "MULLER JURGEN"),
    ],
)
def test_fold_text(name: str, folded: str) -> None:
    assert fold_text(name) == folded


def test_utf8_name_decoded() -> None:
    ds = minimal(SpecificCharacterSet="ISO_IR 192", PatientName="Nguyễn^Văn An", PatientID="VN001")
    keys = InstanceKeys.from_part10(part10(ds))
    assert keys.patient_name == "Nguyễn^Văn An"
    assert keys.patient_name_folded == "NGUYEN VAN AN"


def test_latin1_name_decoded() -> None:
    # ISO_IR 100 bytes for "Müller": the index must hold UTF-8 text, not Latin-1 bytes.
    ds = minimal(SpecificCharacterSet="ISO_IR 100", PatientName="Müller^Jürgen")
    raw = part10(ds)
    assert "Müller".encode("latin-1") in raw
    keys = InstanceKeys.from_part10(raw)
    assert keys.patient_name == "Müller^Jürgen"


def test_iso2022_japanese_decoded() -> None:
    # PS3.5 Annex H example: code extensions switch character sets inside one value.
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds = minimal(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=name)
    raw = part10(ds)
    assert "山田".encode("utf-8") not in raw  # written as ISO 2022, not UTF-8
    assert InstanceKeys.from_part10(raw).patient_name == name


def test_real_ct_keys() -> None:
    raw = open(get_testdata_file("CT_small.dcm"), "rb").read()
    keys = InstanceKeys.from_part10(raw)
    assert keys.modality == "CT"
    assert (keys.rows, keys.columns, keys.number_of_frames) == (128, 128, 1)
    assert keys.transfer_syntax_uid == "1.2.840.10008.1.2.1"
    assert keys.sop_instance_uid.startswith("1.3.6.1.4.1.5962")


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_rejected(missing: str) -> None:
    ds = minimal()
    delattr(ds, missing)
    with pytest.raises(InvalidInstance, match=missing):
        InstanceKeys.from_part10(part10(ds))


def test_garbage_and_truncated_rejected() -> None:
    with pytest.raises(InvalidInstance):
        InstanceKeys.from_part10(b"\x00" * 128 + b"DICM" + b"garbage" * 100)
    with pytest.raises(InvalidInstance):
        InstanceKeys.from_part10(b"not dicom at all")
    raw = open(get_testdata_file("MR_truncated.dcm"), "rb").read()
    with pytest.raises(InvalidInstance, match="truncated"):
        InstanceKeys.from_part10(raw)


def test_malformed_uid_rejected() -> None:
    ds = minimal(StudyInstanceUID="1.2.abc")
    with pytest.raises(InvalidInstance, match="StudyInstanceUID"):
        InstanceKeys.from_part10(part10(ds))


SAMPLES = sorted((__import__("pathlib").Path(__file__).resolve().parent.parent / "sample_dicom").rglob("*.dcm"))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_every_sample_parses_and_any_cut_inside_an_element_is_refused(path) -> None:  # type: ignore[no-untyped-def]
    raw = path.read_bytes()
    keys = InstanceKeys.from_part10(raw)
    assert keys.sop_instance_uid and keys.study_instance_uid and keys.series_instance_uid
    if keys.transfer_syntax_uid == "1.2.840.10008.1.2.1.99":
        return  # a deflate stream may carry trailing padding; covered by the zlib check
    for cut in (len(raw) - 3, len(raw) - 101):
        with pytest.raises(InvalidInstance):
            InstanceKeys.from_part10(raw[:cut])
