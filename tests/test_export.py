"""Streamed study ZIP with a DICOMDIR, checked by pydicom's file-set reader and DCMTK."""

from __future__ import annotations

import io
import subprocess
import tracemalloc
import zipfile
from pathlib import Path

import pydicom
from pydicom.fileset import FileSet

from pacs.deid import Deidentifier
from pacs.export import study_zip

SAMPLES = Path(__file__).resolve().parents[1] / "sample_dicom"
FILES = sorted(SAMPLES.rglob("*.dcm"))


def unzip(data: bytes, to: Path) -> zipfile.ZipFile:
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.testzip() is None
    z.extractall(to)
    return z


def test_zip_holds_every_file_unchanged_and_a_readable_dicomdir(tmp_path: Path) -> None:
    data = b"".join(study_zip(p.read_bytes() for p in FILES))
    z = unzip(data, tmp_path)
    assert len(z.namelist()) == len(FILES) + 1 and "DICOMDIR" in z.namelist()
    fs = FileSet(pydicom.dcmread(tmp_path / "DICOMDIR"))
    assert len(fs) == len(FILES)
    for path in FILES:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        found = fs.find(SOPInstanceUID=uid)
        assert len(found) == 1
        assert Path(found[0].path).read_bytes() == path.read_bytes()
    # PS3.10 file IDs: upper case, at most 8 characters per component.
    assert all(len(part) <= 8 and part == part.upper() for name in z.namelist() for part in name.split("/"))
    dump = subprocess.run(["/usr/bin/dcmdump", str(tmp_path / "DICOMDIR")], capture_output=True, text=True)
    assert dump.returncode == 0 and "E:" not in dump.stderr
    assert dump.stdout.count("DirectoryRecordType") >= len(FILES)


def test_uncompressed_files_are_deflated_compressed_ones_stored(tmp_path: Path) -> None:
    z = zipfile.ZipFile(io.BytesIO(b"".join(study_zip(p.read_bytes() for p in FILES))))
    kinds = {}
    for info, path in zip(z.infolist(), FILES):
        ts = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        native = ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")
        kinds[native] = kinds.get(native, set()) | {info.compress_type}
    assert kinds[False] == {zipfile.ZIP_STORED} and kinds[True] == {zipfile.ZIP_DEFLATED}


def test_zip_is_streamed_one_instance_at_a_time() -> None:
    big = (SAMPLES / "CT" / "eCT_Supplemental.dcm").read_bytes()  # 1 MB
    chunks = 0
    tracemalloc.start()
    for chunk in study_zip(big for _ in range(40)):  # 40 MB of input
        chunks += 1
        assert len(chunk) < 3 * len(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert chunks >= 40
    assert peak < 12 * len(big)  # a few instances' worth, never the whole 40 MB


def test_deidentified_zip_has_no_phi_and_consistent_uids(tmp_path: Path) -> None:
    vn = [SAMPLES / "MR" / "MR_small_implicit.dcm", SAMPLES / "MR" / "MR_small_expb.dcm",
          SAMPLES / "MR" / "MR2_J2KI.dcm"] + sorted((SAMPLES / "patient_77654033").glob("*.dcm"))
    originals = [pydicom.dcmread(p) for p in vn]
    deid = Deidentifier("link-salt")
    data = b"".join(study_zip((p.read_bytes() for p in vn), transform=deid.dataset))
    unzip(data, tmp_path)
    phi: set[bytes] = set()
    for ds in originals:
        for kw in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                   "InstitutionName", "ReferringPhysicianName", "StudyInstanceUID", "SOPInstanceUID"):
            value = str(ds.get(kw, "") or "")
            if value and value in str(ds.get("Manufacturer", "")):
                continue  # e.g. InstitutionName "TOSHIBA" inside Manufacturer "TOSHIBA_MEC", kept by the profile
            if len(value) >= 4:
                phi.add(value.encode("utf-8"))
                for part in value.replace("^", " ").split():
                    if len(part) >= 4 and not part.isdigit():
                        phi.add(part.encode("utf-8"))
    assert phi
    fs = FileSet(pydicom.dcmread(tmp_path / "DICOMDIR"))
    for inst in fs:
        raw = Path(inst.path).read_bytes()
        leaked = [p for p in phi if p in raw]
        assert not leaked, (inst.path, leaked)
        ds = pydicom.dcmread(inst.path)
        assert ds.PatientIdentityRemoved == "YES"
        assert not any(elem.tag.is_private for elem in ds)
    # Pixels unchanged; UIDs mapped the same way as the link's viewer maps them.
    for orig in originals[:2]:
        found = fs.find(SOPInstanceUID=deid.uid(orig.SOPInstanceUID))
        assert len(found) == 1
        assert pydicom.dcmread(found[0].path).PixelData == orig.PixelData


def test_deidentified_patient_is_an_obvious_label_with_age_kept() -> None:
    """PS3.15 E.1 Basic Profile with the modified-dates and patient-characteristics options."""
    ds = pydicom.dcmread(SAMPLES / "MR" / "MR_small_implicit.dcm")
    ds.PatientName, ds.PatientID = "Nguyễn^Văn An", "BN-12345"
    ds.PatientBirthDate, ds.StudyDate = "19600315", "20240314"
    if "PatientAge" in ds:
        del ds.PatientAge
    pixels = ds.PixelData
    deid = Deidentifier("link-salt")
    out = deid.dataset(ds)
    assert str(out.PatientName).startswith("ANON^") and str(out.PatientID).startswith("ANON-")
    assert str(out.PatientName)[5:] == str(out.PatientID)[5:]  # one label for both
    assert out.PatientBirthDate == ""
    assert out.PatientAge == "063Y"  # the day before the 64th birthday
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113107", "113108"]
    assert out.PixelData == pixels
    again = pydicom.dcmread(SAMPLES / "MR" / "MR_small_implicit.dcm")
    again.PatientID = "BN-12345"
    assert str(Deidentifier("link-salt").dataset(again).PatientID) == str(out.PatientID)  # stable in a link
    again = pydicom.dcmread(SAMPLES / "MR" / "MR_small_implicit.dcm")
    again.PatientID = "BN-12345"
    assert str(Deidentifier("other-link").dataset(again).PatientID) != str(out.PatientID)
