"""The committed real samples (sample_dicom/) and the synthetic benchmark generators."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import UID

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_dicom"
SCRIPTS = ROOT / "scripts"
FILES = sorted(SAMPLES.rglob("*.dcm"))
IDS = [str(p.relative_to(SAMPLES)) for p in FILES]

REQUIRED_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def test_sample_folder_is_populated_and_small():
    assert len(FILES) >= 20
    total = sum(p.stat().st_size for p in FILES)
    assert total < 12_000_000, total
    modalities = {pydicom.dcmread(p, stop_before_pixels=True).Modality for p in FILES}
    assert {"CT", "MR", "CR", "US"} <= modalities


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_sample_reads_with_uids(path):
    ds = pydicom.dcmread(path)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert ds.get(kw), f"{path.name}: {kw} missing"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID


def test_sop_instance_uids_are_unique():
    seen: dict[str, str] = {}
    for path, rel in zip(FILES, IDS):
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert sop not in seen, f"{rel} and {seen[sop]} share SOP Instance UID {sop}"
        seen[sop] = rel


def test_required_transfer_syntaxes_present():
    found = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
             for p in FILES}
    missing = {uid: name for uid, name in REQUIRED_SYNTAXES.items() if uid not in found}
    assert not missing, missing


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_sample_pixels_decode(path):
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.SamplesPerPixel)
    expected = (ds.Rows, ds.Columns) if spp == 1 else (ds.Rows, ds.Columns, spp)
    if frames > 1:
        expected = (frames,) + expected
    assert arr.shape == expected
    assert arr.size and int(arr.max()) > int(arr.min())  # not blank


def test_every_sample_listed_in_sources():
    text = (SAMPLES / "SOURCES.md").read_text(encoding="utf-8")
    for rel in IDS:
        assert f"`{rel}`" in text, f"{rel} is not listed in sample_dicom/SOURCES.md"


def test_character_sets_covered():
    names = {}
    charsets = set()
    for path in FILES:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        cs = ds.get("SpecificCharacterSet", "")
        charsets.add(cs if isinstance(cs, str) else "\\".join(cs))
        if cs == "ISO_IR 192":
            names[str(ds.PatientName)] = path
    assert {"Nguyễn^Văn An", "Trần^Thị Bình", "Đặng^Minh Châu"} <= set(names)
    assert "ISO_IR 100" in charsets and "" in charsets
    # the UTF-8 bytes are really in the file
    raw = names["Nguyễn^Văn An"].read_bytes()
    assert "Nguyễn^Văn An".encode("utf-8") in raw


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _hu_at(ds, arr, x_mm, y_mm, half=1):
    ipp = [float(v) for v in ds.ImagePositionPatient]
    ps = [float(v) for v in ds.PixelSpacing]
    col = int(round((x_mm - ipp[0]) / ps[1]))
    row = int(round((y_mm - ipp[1]) / ps[0]))
    box = arr[row - half:row + half + 1, col - half:col + half + 1]
    return float(np.median(box))


def test_make_ct_series_small(tmp_path):
    out = _run("make_ct_series.py", "--out", str(tmp_path), "--slices", "3", "--size", "64")
    assert "wrote 3 CT slices" in out
    files = sorted(tmp_path.glob("*.dcm"))
    assert len(files) == 3
    dss = [pydicom.dcmread(f) for f in files]
    assert len({d.StudyInstanceUID for d in dss}) == 1
    assert len({d.SeriesInstanceUID for d in dss}) == 1
    assert len({d.SOPInstanceUID for d in dss}) == 3
    assert [int(d.InstanceNumber) for d in dss] == [1, 2, 3]
    zs = [float(d.ImagePositionPatient[2]) for d in dss]
    assert zs[0] > zs[1] > zs[2] and abs(zs[0] - zs[1] - 1.25) < 1e-6
    for d in dss:
        assert d.SOPClassUID == pydicom.uid.CTImageStorage
        assert d.file_meta.MediaStorageSOPClassUID == pydicom.uid.CTImageStorage
        assert d.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert d.Modality == "CT" and d.BodyPartExamined == "CHEST"
        assert d.SpecificCharacterSet == "ISO_IR 192"
        assert str(d.PatientName) == "Nguyễn^Thị Lan"
        assert (d.Rows, d.Columns) == (64, 64)
        assert float(d.SliceLocation) == float(d.ImagePositionPatient[2])
    mid = dss[1]
    hu = mid.pixel_array.astype(np.float32) * float(mid.RescaleSlope) + float(mid.RescaleIntercept)
    for x in (-72.0, 72.0):  # lung centres
        assert -900 < _hu_at(mid, hu, x, -5.0) < -800
    assert abs(float(np.median(hu[:4, :4])) + 1000) < 30  # air in the corner
    assert abs(float(np.median(hu[-4:, -4:])) + 1000) < 30
    assert hu.max() > 500  # bone present


def test_make_ct_series_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        _run("make_ct_series.py", "--out", str(d), "--slices", "2", "--size", "32", "--seed", "7",
             "--patient-id", "P7", "--study-uid", "1.2.3.4")
    for fa in sorted(a.glob("*.dcm")):
        assert fa.read_bytes() == (b / fa.name).read_bytes()
    assert pydicom.dcmread(next(a.glob("*.dcm"))).StudyInstanceUID == "1.2.3.4"


def test_make_cr_small(tmp_path):
    target = tmp_path / "cr.dcm"
    out = _run("make_cr.py", "--out", str(target), "--rows", "300", "--cols", "256")
    assert "wrote" in out
    ds = pydicom.dcmread(target)
    assert ds.SOPClassUID == pydicom.uid.ComputedRadiographyImageStorage
    assert ds.Modality == "CR"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert str(ds.PatientName) == "Trần^Văn Hùng"
    assert len(ds.ImagerPixelSpacing) == 2
    arr = ds.pixel_array
    assert arr.shape == (300, 256) and int(arr.max()) <= 4095
    # body brighter than the air at the top corners (MONOCHROME2)
    assert np.median(arr[-20:, 100:156]) > np.median(arr[:10, :10]) + 1000
    assert float(ds.WindowWidth) > 0


def test_make_cr_monochrome1_dir_output(tmp_path):
    _run("make_cr.py", "--out", str(tmp_path), "--rows", "64", "--cols", "48",
         "--photometric", "MONOCHROME1", "--seed", "5")
    ds = pydicom.dcmread(tmp_path / "CR_0005.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    arr = ds.pixel_array
    assert np.median(arr[:4, :4]) > np.median(arr[-8:, 20:28])  # air is bright in MONOCHROME1
    assert UID(ds.SOPInstanceUID).is_valid
