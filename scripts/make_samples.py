#!/usr/bin/env python3
"""Build ``sample_dicom/`` from real DICOM files that ship inside installed packages.

Sources (nothing is downloaded):

* ``pydicom`` wheel: ``pydicom/data/test_files``
* ``pydicom-data`` wheel (``pip install pydicom-data==1.0.0``): ``data_store/data``

Both are found through :func:`pydicom.data.get_testdata_file` with ``download=False``
(the ``dicomdirtests`` tree is read straight from pydicom's ``test_files`` folder).

Two kinds of entries:

``copy``
    the file is copied byte for byte.
``rewrite``
    the file is a transfer-syntax variant of an image that is also in the set (pydicom
    ships the same SOP Instance UID in every variant, and the archive keeps the first
    instance it sees per SOP Instance UID), or it lacks the Study/Series UIDs an archive
    needs.  Only Study/Series/SOP Instance UIDs (and MediaStorageSOPInstanceUID) are
    replaced, plus -- where listed -- a Vietnamese Patient's Name with Specific Character
    Set ``ISO_IR 192`` and a new Patient ID (so one Patient ID never carries two names).
    The Pixel Data bytes are never re-encoded and the original transfer syntax is kept;
    the script checks both after writing.

New UIDs come from :func:`pydicom.uid.generate_uid` with pydicom's root prefix and fixed
entropy sources, so every run produces byte-identical files.

Usage::

    .venv/bin/python scripts/make_samples.py            # (re)build sample_dicom/
    .venv/bin/python scripts/make_samples.py --check    # only verify what is there
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import shutil
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
from pydicom.uid import PYDICOM_ROOT_UID, UID, generate_uid

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sample_dicom"
ENTROPY_TAG = "minipacs-sample-v1"

# Licence column: the package's licence, then where pydicom's test_files/README.txt says
# the file came from.
_PD = "MIT (pydicom)"
_PDD = "MIT (pydicom-data)"
LICENCE_NEMA = "{}; NEMA WG04 CompressedSamples (public DICOM test images)"
LICENCE_PYDICOM = LICENCE_NEMA.format(_PD)
LICENCE_PYDICOM_DATA = LICENCE_NEMA.format(_PDD)
LICENCE_NEMA_MF = f"{_PDD}; NEMA multi-frame CT samples (nemamfct, public test images)"
LICENCE_GDCM = f"{_PDD}; GDCM test data, BSD-3-Clause (GDCM licence)"
LICENCE_PCIR = f"{_PD}; pcir.org freely available image sets, downsized to 16x16"
LICENCE_DCLUNIE = f"{_PD}; dclunie.com sample images"
LICENCE_BARRE = f"{_PD}; barre.nom.fr sample images (US-RGB-8-epicard), downsized"
LICENCE_PD_OTHER = f"{_PD}; pydicom test file (origin: pydicom issue/PR, see test_files/README.txt)"
LICENCE_PDD_OTHER = f"{_PDD}; pydicom test file (origin not documented further)"


@dataclass
class Sample:
    dest: str  # path below sample_dicom/
    source: str  # name for get_testdata_file, or "dicomdirtests/..." relative path
    modality: str
    action: str = "copy"  # "copy" or "rewrite"
    patient_name: str | None = None
    patient_id: str | None = None
    add_missing: dict = field(default_factory=dict)  # attributes to add when absent
    licence: str = ""
    note: str = ""


VN = {
    "an": ("Nguyễn^Văn An", "VN-0001"),
    "binh": ("Trần^Thị Bình", "VN-0002"),
    "chau": ("Đặng^Minh Châu", "VN-0003"),
    "dung": ("Phạm^Quốc Dũng", "VN-0004"),
}

SAMPLES: list[Sample] = [
    # ---- CT -----------------------------------------------------------------------
    Sample("CT/CT_small.dcm", "CT_small.dcm", "CT", licence=LICENCE_PYDICOM,
           note="128x128 downsized NEMA CT1; ISO_IR 100"),
    Sample("CT/eCT_Supplemental.dcm", "eCT_Supplemental.dcm", "CT", licence=LICENCE_NEMA_MF,
           note="Enhanced CT, 2 frames 512x512 16-bit, supplemental palette LUT"),
    # ---- MR: one image in many transfer syntaxes ---------------------------------------
    Sample("MR/MR_small.dcm", "MR_small.dcm", "MR", licence=LICENCE_PYDICOM,
           note="64x64 downsized NEMA MR1; no Specific Character Set (default repertoire)"),
    Sample("MR/MR_small_implicit.dcm", "MR_small_implicit.dcm", "MR", "rewrite", *VN["an"],
           licence=LICENCE_PYDICOM),
    Sample("MR/MR_small_expb.dcm", "MR_small_expb.dcm", "MR", "rewrite", *VN["binh"],
           licence=LICENCE_PYDICOM),
    Sample("MR/MR_small_RLE.dcm", "MR_small_RLE.dcm", "MR", "rewrite",
           licence=LICENCE_PYDICOM),
    Sample("MR/MR_small_jpeg_ls_lossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR", "rewrite",
           licence=LICENCE_PYDICOM),
    Sample("MR/MR_small_jp2klossless.dcm", "MR_small_jp2klossless.dcm", "MR", "rewrite",
           licence=LICENCE_PYDICOM),
    Sample("MR/MR2_J2KR.dcm", "MR2_J2KR.dcm", "MR", licence=LICENCE_PYDICOM_DATA,
           note="1024x1024 NEMA MR2, 12-bit"),
    Sample("MR/MR2_J2KI.dcm", "MR2_J2KI.dcm", "MR", "rewrite", *VN["chau"], licence=LICENCE_PYDICOM_DATA,
           note="same image as MR2_J2KR, lossy"),
    Sample("MR/MR-SIEMENS-DICOM-WithOverlays.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "MR",
           licence=LICENCE_GDCM, note="real Siemens MR, overlay plane + icon image sequence"),
    Sample("MR/emri_small.dcm", "emri_small.dcm", "MR", licence=LICENCE_PDD_OTHER,
           note="Enhanced MR, 10 frames 64x64; empty Patient's Name/ID"),
    Sample("MR/emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm", "MR",
           "rewrite", licence=LICENCE_PDD_OTHER, note="multi-frame JPEG-LS"),
    # ---- CR -----------------------------------------------------------------------
    Sample("CR/RG3_J2KR.dcm", "RG3_J2KR.dcm", "CR", licence=LICENCE_PYDICOM_DATA,
           note="1760x1760 NEMA RG3, 10-bit, MONOCHROME1"),
    Sample("CR/RG1_J2KI.dcm", "RG1_J2KI.dcm", "CR", licence=LICENCE_PYDICOM_DATA,
           note="1955x1841 NEMA RG1, 15-bit, MONOCHROME1"),
    # ---- US -----------------------------------------------------------------------
    Sample("US/examples_ybr_color.dcm", "examples_ybr_color.dcm", "US", licence=LICENCE_PD_OTHER,
           note="30-frame multi-frame US, YBR_FULL_422"),
    Sample("US/examples_palette.dcm", "examples_palette.dcm", "US", licence=LICENCE_PD_OTHER,
           note="PALETTE COLOR (Philips)"),
    Sample("US/OBXXXX1A_rle.dcm", "OBXXXX1A_rle.dcm", "US", "rewrite",
           licence=LICENCE_PDD_OTHER, note="PALETTE COLOR, full size of examples_palette"),
    Sample("US/examples_rgb_color.dcm", "examples_rgb_color.dcm", "US", licence=LICENCE_PYDICOM,
           note="RGB, cropped NEMA US1"),
    Sample("US/US1_J2KI.dcm", "US1_J2KI.dcm", "US", "rewrite", licence=LICENCE_PYDICOM_DATA,
           note="YBR_ICT, 480x640 NEMA US1"),
    Sample("US/JPGLosslessP14SV1_1s_1f_8b.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "US",
           licence=LICENCE_PDD_OTHER, note="768x1024 8-bit grey; empty Patient ID"),
    Sample("US/ExplVR_BigEnd.dcm", "ExplVR_BigEnd.dcm", "US", licence=LICENCE_BARRE,
           note="RGB 60x80; no Patient ID element, Study Date in legacy YYYY.MM.DD form"),
    Sample("US/gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16.dcm", "US", licence=LICENCE_GDCM,
           note="16-bit segmented PALETTE COLOR LUT"),
    # ---- NM (Secondary Capture objects with Modality NM) ----------------------------------
    Sample("NM/JPEG-LL.dcm", "JPEG-LL.dcm", "NM", licence=LICENCE_PYDICOM_DATA,
           note="NEMA NM1, 1024x256 16-bit, Secondary Capture SOP class"),
    Sample("NM/JPEG2000.dcm", "JPEG2000.dcm", "NM", "rewrite", licence=LICENCE_PYDICOM,
           note="same image as JPEG-LL, lossy"),
    # ---- OT -----------------------------------------------------------------------
    Sample("OT/image_dfl.dcm", "image_dfl.dcm", "OT", licence=LICENCE_DCLUNIE,
           note="512x512 8-bit; empty Patient ID, no Study Date or Series Number"),
    Sample("OT/JPEGLSNearLossless_16.dcm", "JPEGLSNearLossless_16.dcm", "OT", "rewrite",
           *VN["dung"], licence=LICENCE_PD_OTHER,
           add_missing={"Modality": "OT", "ConversionType": "WSD", "StudyDate": "",
                        "StudyTime": "", "AccessionNumber": "", "ReferringPhysicianName": "",
                        "PatientBirthDate": "", "PatientSex": "", "StudyID": "",
                        "SeriesNumber": 1, "InstanceNumber": 1},
           note="50x10 16-bit test strip; had no Study/Series/patient attributes: added"),
]

# A small real multi-study patient (downsized to 16x16): 2 studies, 4 series, 7 instances.
for _sub, _mod in [("CR1/6154", "CR"), ("CR2/6247", "CR"), ("CR3/6278", "CR"),
                   ("CT2/17106", "CT"), ("CT2/17136", "CT"), ("CT2/17166", "CT"),
                   ("CT2/17196", "CT")]:
    SAMPLES.append(Sample(f"patient_77654033/{_sub.replace('/', '_')}.dcm",
                          f"dicomdirtests/77654033/{_sub}", _mod, licence=LICENCE_PCIR,
                          note="Doe^Archibald: XR C-spine study (3 CR series) + CT head study"))

# Transfer syntaxes the archive must accept; JPEG Extended (.51) is absent on purpose:
# the only .51 files shipped are 12-bit and need the GPL pylibjpeg-libjpeg to decode.
REQUIRED_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
}


def source_path(s: Sample) -> Path:
    if s.source.startswith("dicomdirtests/"):
        p = Path(pydicom.data.__file__).parent / "test_files" / s.source
    else:
        found = pydicom.data.get_testdata_file(s.source, download=False)
        if found is None:
            raise SystemExit(f"{s.source}: not found; install pydicom-data==1.0.0")
        p = Path(found)
    if not p.is_file():
        raise SystemExit(f"{p}: missing")
    return p


def package_of(p: Path) -> tuple[str, str]:
    parts = p.parts
    if "data_store" in parts:
        return "pydicom-data", md.version("pydicom-data")
    return "pydicom", md.version("pydicom")


def new_uid(s: Sample, kind: str, original: str) -> UID:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=[ENTROPY_TAG, s.dest, kind, original])


def _text_values(ds: pydicom.Dataset) -> dict:
    """Decoded text of every top-level text element (to prove the charset change kept them)."""
    out = {}
    for elem in ds:
        if elem.VR in ("PN", "LO", "SH", "ST", "LT", "UT", "CS", "DA", "TM", "DS", "IS", "AE"):
            out[elem.tag] = str(elem.value)
    return out


def rewrite(s: Sample, src: Path, dst: Path) -> list[str]:
    changes = []
    ds = pydicom.dcmread(src)
    orig_ts = ds.file_meta.TransferSyntaxUID
    for _ in ds.iterall():  # decode every raw element with the original character set
        pass
    before = _text_values(ds)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        old = str(ds.get(kw, ""))
        setattr(ds, kw, new_uid(s, kw, old))
        changes.append(f"{kw} {'added' if not old else 'rewritten'}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for kw, val in s.add_missing.items():
        if kw not in ds:
            setattr(ds, kw, val)
            changes.append(f"{kw} added")
    if s.patient_name:
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.PatientName = s.patient_name
        ds.PatientID = s.patient_id
        changes.append(f"PatientName set to {s.patient_name}, PatientID {s.patient_id}, "
                       "SpecificCharacterSet ISO_IR 192")
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)

    # verify: same syntax, same pixel bytes, same decoded pixels, other text unchanged
    out = pydicom.dcmread(dst)
    src_ds = pydicom.dcmread(src)
    assert out.file_meta.TransferSyntaxUID == orig_ts, (dst, out.file_meta.TransferSyntaxUID)
    assert out.PixelData == src_ds.PixelData, f"{dst}: pixel bytes changed"
    assert np.array_equal(out.pixel_array, src_ds.pixel_array), f"{dst}: pixels differ"
    after = _text_values(out)
    skip = {pydicom.tag.Tag(k) for k in ("PatientName", "PatientID", "SpecificCharacterSet")}
    for tag, val in before.items():
        if tag not in skip:
            assert after.get(tag) == val, f"{dst}: {tag} changed {val!r} -> {after.get(tag)!r}"
    return changes


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def verify(files: list[Path]) -> list[dict]:
    """Read every file: three UIDs present, SOP Instance UIDs unique, pixels decode."""
    seen: dict[str, Path] = {}
    info = []
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            assert ds.get(kw), f"{f}: no {kw}"
        sop = str(ds.SOPInstanceUID)
        assert sop not in seen, f"{f}: SOP Instance UID also in {seen[sop]}"
        seen[sop] = f
        arr = ds.pixel_array
        ts = ds.file_meta.TransferSyntaxUID
        info.append({"path": f, "ts": ts, "shape": arr.shape, "size": f.stat().st_size,
                     "modality": ds.get("Modality", ""), "charset": ds.get("SpecificCharacterSet", "")})
    return info


def write_sources(rows: list[dict]) -> None:
    lines = [
        "# Sample DICOM files: provenance",
        "",
        "Written by `scripts/make_samples.py` (do not edit by hand; rerun the script).",
        "Every file is a real DICOM object copied from an installed Python package; nothing",
        "was downloaded and no Pixel Data was re-encoded. \"copied\" means byte for byte.",
        "Rewritten files are transfer-syntax variants of an image that is also here (the",
        "package ships them with the same SOP Instance UID) and got new, deterministic",
        "Study/Series/SOP Instance UIDs (pydicom root `1.2.826.0.1.3680043.8.498.`).",
        "Some of them carry a Vietnamese Patient's Name in UTF-8 (`ISO_IR 192`) with a new",
        "Patient ID. JPEG Extended (1.2.840.10008.1.2.4.51) is not included: the only shipped",
        "examples are 12-bit and decode only with the GPL-licensed pylibjpeg-libjpeg.",
        "",
        "The larger synthetic benchmark data (a 300-slice CT series, a 2048x2500 CR) is not",
        "stored: generate it with `scripts/make_ct_series.py` and `scripts/make_cr.py`.",
        "",
        "| file | source package | original file | modality | transfer syntax | bytes | sha256 (12) | changes | licence | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| `{r['dest']}` | {r['pkg']} {r['ver']} | `{r['orig']}` | {r['modality']} | "
            f"{r['ts']} {r['ts'].name} | {r['size']} | `{r['sha'][:12]}` | {r['changes']} | "
            f"{r['licence']} | {r['note']} |"
        )
    total = sum(r["size"] for r in rows)
    syntaxes = sorted({str(r["ts"]) for r in rows})
    lines += ["", f"{len(rows)} files, {total} bytes ({total / 1e6:.2f} MB).",
              f"Transfer syntaxes present: {', '.join(syntaxes)}.", ""]
    (OUT / "SOURCES.md").write_text("\n".join(lines), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="only verify sample_dicom/")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")

    dests = [OUT / s.dest for s in SAMPLES]
    assert len(set(dests)) == len(dests), "duplicate destination"
    if not args.check:
        rows = []
        for s, dst in zip(SAMPLES, dests):
            src = source_path(s)
            pkg, ver = package_of(src)
            if s.action == "copy":
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                changes = "copied unchanged"
            else:
                changes = "; ".join(rewrite(s, src, dst))
            ts = pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID
            orig = s.source if s.source.startswith("dicomdirtests/") else src.name
            where = "pydicom/data/test_files/" if pkg == "pydicom" else "data_store/data/"
            rows.append({"dest": s.dest, "pkg": pkg, "ver": ver, "orig": where + orig,
                         "modality": s.modality, "ts": ts, "size": dst.stat().st_size,
                         "sha": sha256(dst), "changes": changes, "licence": s.licence,
                         "note": s.note})
        write_sources(rows)
        stray = sorted(set(OUT.rglob("*.dcm")) - set(dests))
        for p in stray:
            print(f"warning: {p.relative_to(ROOT)} is not in the manifest", file=sys.stderr)

    info = verify(dests)
    found = {str(i["ts"]) for i in info}
    missing = REQUIRED_SYNTAXES - found
    assert not missing, f"missing transfer syntaxes: {missing}"
    for i in info:
        print(f"{str(i['path'].relative_to(ROOT)):52s} {i['modality']:3s} {i['size']:>9d} "
              f"{i['ts'].name}")
    total = sum(i["size"] for i in info)
    print(f"{len(info)} files, {total / 1e6:.2f} MB, {len(found)} transfer syntaxes, all decode")
    return 0


if __name__ == "__main__":
    sys.exit(main())
