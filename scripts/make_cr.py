#!/usr/bin/env python3
"""Generate one large synthetic chest radiograph (Computed Radiography Image Storage).

The image is a SYNTHETIC PA chest phantom, not patient data: torso with neck and shoulders,
two lung fields with diaphragm domes (the right one higher), heart shadow to the patient's
left, spine, clavicles, posterior and anterior ribs, a slight heel-effect gradient and seeded
Gaussian noise.  The same arguments give a byte-identical file.

Pixel encoding: BitsAllocated 16, BitsStored 12, HighBit 11, PixelRepresentation 0 (values
0..4095).  Default PhotometricInterpretation MONOCHROME2 (higher value = more attenuation =
brighter: bone white, lungs dark, direct exposure black).  ``--photometric MONOCHROME1``
stores 4095 - value instead, as many real CR/DX devices do (the sample_dicom RG1/RG3 CRs are
MONOCHROME1), so a viewer must invert it.  WindowCenter/WindowWidth cover the 1st..99th
percentile of the stored values inside the body.  Explicit VR Little Endian.

Geometry: default 2048 columns x 2500 rows at ImagerPixelSpacing 0.175 mm (a 14 x 17 inch
cassette, ~10 MB); for other sizes the spacing scales with the column count so the anatomy
still fills the width.  PatientOrientation L\\F (PA view, patient's right on the image left).

Example:  scripts/make_cr.py --out /tmp/cr                 (writes /tmp/cr/CR_0001.dcm)
          scripts/make_cr.py --out /tmp/x.dcm --rows 300 --cols 256 --seed 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    ComputedRadiographyImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

WIDTH_MM = 358.4  # 2048 * 0.175


def det_uid(*parts: object) -> str:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["minipacs-cr"] + [str(p) for p in parts])


def _h(seed: int, what: str) -> int:
    return int(hashlib.sha256(f"{seed}:{what}".encode()).hexdigest()[:12], 16)


def _dome(u: np.ndarray) -> np.ndarray:
    """sqrt(1 - u^2) clipped to 0: projected thickness of a round object."""
    return np.sqrt(np.clip(1.0 - u * u, 0.0, None))


def chest_phantom(rows: int, cols: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Projected attenuation (arbitrary units, ~0..1.6) on a rows x cols grid."""
    x = ((np.arange(cols, dtype=np.float32) - (cols - 1) / 2.0) * spacing)[None, :]  # + = patient left
    y = (np.arange(rows, dtype=np.float32) * spacing)[:, None]  # mm from the top edge
    ax = np.abs(x)

    # torso silhouette: neck, shoulders, trunk
    half = np.where(y < 70, 55.0,
                    np.where(y < 150, 55.0 + (y - 70) / 80.0 * 130.0, 185.0 - (y - 150) * 0.04))
    half = half.astype(np.float32)
    d = 0.9 * _dome(x / half)
    d *= np.clip((y - 5.0) / 25.0, 0.0, 1.0)  # top of the neck fades out

    # lungs: apex at ~115 mm, bases at the diaphragm domes (the right one, image left, higher)
    dome_line = np.where(x < 0, 335.0 - 45.0 * _dome((x + 85.0) / 95.0),
                         350.0 - 45.0 * _dome((x - 85.0) / 95.0))
    for cx in (-85.0, 85.0):
        rx = 70.0 + 0.08 * (y - 115.0)
        shape = _dome((x - cx) / np.maximum(rx, 1.0))
        shape = shape * np.clip((y - 115.0) / 55.0, 0.0, 1.0) ** 0.5 * (y < dome_line)
        d -= 0.55 * shape

    # heart (to the patient's left = image right), mediastinum, spine with vertebrae
    heart = _dome(np.sqrt(((x - 28.0) / 80.0) ** 2 + ((y - 290.0) / 62.0) ** 2))
    d += 0.5 * heart * np.clip((dome_line + 15.0 - y) / 20.0, 0.0, 1.0)
    d += 0.18 * _dome(x / 28.0) * (y > 40)
    d += 0.15 * _dome(x / 22.0) * (0.5 + 0.5 * np.cos(2 * np.pi * y / 26.0)) ** 4 * (y > 40)

    # abdomen below the domes (liver on the patient's right)
    below = np.clip((y - dome_line + 8.0) / 15.0, 0.0, 1.0)
    d += 0.45 * below * _dome(x / 175.0)

    # clavicles
    cy = 112.0 - 0.12 * (ax - 20.0)
    d += 0.25 * _dome((y - cy) / 7.0) * ((ax > 15) & (ax < 150))

    # posterior ribs (curving down laterally) and fainter anterior ribs, inside the chest
    chest = (ax < half - 12.0) & (y < dome_line + 30.0)
    for i in range(10):
        y0 = 122.0 + i * 21.0
        post = y0 + 0.0020 * (ax - 20.0) ** 2 - 0.05 * ax
        ant = y0 + 35.0 - 0.22 * (ax - 20.0)
        d += 0.12 * _dome((y - post) / 6.0) * (chest & (ax > 18))
        d += 0.06 * _dome((y - ant) / 5.5) * (chest & (ax > 40) & (ax < 140))

    d = np.clip(d, 0.0, None)
    heel = 1.0 + 0.04 * (y / y.max() - 0.5)
    val = 120.0 + 3700.0 * (1.0 - np.exp(-1.8 * d)) * heel
    val += rng.standard_normal(val.shape, dtype=np.float32) * np.float32(12.0)
    return np.clip(np.rint(val), 0, 4095).astype("<u2")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Write one synthetic chest CR (12-bit in 16).")
    ap.add_argument("--out", required=True,
                    help="output file (*.dcm) or directory (created; file CR_<seed>.dcm)")
    ap.add_argument("--rows", type=int, default=2500, help="rows (default 2500)")
    ap.add_argument("--cols", type=int, default=2048, help="columns (default 2048)")
    ap.add_argument("--seed", type=int, default=1, help="RNG / UID seed (default 1)")
    ap.add_argument("--photometric", choices=("MONOCHROME2", "MONOCHROME1"), default="MONOCHROME2")
    ap.add_argument("--patient-name", default="Trần^Văn Hùng", help="DICOM PN, UTF-8")
    ap.add_argument("--patient-id", default=None, help="default CR-SYN-<seed>")
    ap.add_argument("--study-uid", default=None, help="default: derived from seed and patient id")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.rows < 16 or args.cols < 16:
        raise SystemExit("--rows and --cols must be >= 16")
    if args.patient_id is None:
        args.patient_id = f"CR-SYN-{args.seed:04d}"
    t0 = time.perf_counter()
    out = Path(args.out)
    if out.suffix.lower() != ".dcm":
        out = out / f"CR_{args.seed:04d}.dcm"
    out.parent.mkdir(parents=True, exist_ok=True)

    spacing = WIDTH_MM / args.cols
    rng = np.random.default_rng(args.seed)
    img = chest_phantom(args.rows, args.cols, spacing, rng)
    body = img[img > 400]
    lo, hi = np.percentile(body if body.size else img, [1, 99])
    if args.photometric == "MONOCHROME1":
        img = (4095 - img).astype("<u2")
        lo, hi = 4095 - hi, 4095 - lo

    seed = args.seed
    study_uid = args.study_uid or det_uid(seed, args.patient_id, "study")
    series_uid = det_uid(study_uid, seed, "series")
    sop_uid = det_uid(series_uid, args.rows, args.cols, args.photometric, "sop")
    day = dt.date(2025, 1, 2) + dt.timedelta(days=_h(seed, "date") % 300)
    minutes = 7 * 60 + _h(seed, "time") % 600
    date = day.strftime("%Y%m%d")
    tm = f"{minutes // 60:02d}{minutes % 60:02d}{_h(seed, 's') % 60:02d}"
    birth = dt.date(1945, 1, 1) + dt.timedelta(days=_h(seed, "birth") % (60 * 365))

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, tm
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = tm
    ds.AccessionNumber = f"R{_h(seed, 'acc') % 10**9:09d}"
    ds.Modality = "CR"
    ds.Manufacturer = "MiniPACS synthetic"
    ds.InstitutionName = "Bệnh viện Mô phỏng"
    ds.ReferringPhysicianName = "Hoàng^Thị Thu"
    ds.StationName = "SYNTHCR01"
    ds.StudyDescription = "X-quang ngực thẳng (synthetic phantom)"
    ds.SeriesDescription = "Chest PA (synthetic)"
    ds.ManufacturerModelName = "make_cr.py"
    ds.PatientName = args.patient_name
    ds.PatientID = args.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "M" if _h(seed, "sex") % 2 else "F"
    ds.PatientAge = f"{(day - birth).days // 365:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.KVP = "120"
    ds.DistanceSourceToDetector = "1800"
    ds.ExposureTime = 8
    ds.XRayTubeCurrent = 320
    ds.ImagerPixelSpacing = [f"{spacing:.6g}", f"{spacing:.6g}"]
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(_h(seed, "sid") % 100000)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = args.photometric
    ds.Rows, ds.Columns = args.rows, args.cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter = str(int(round((lo + hi) / 2)))
    ds.WindowWidth = str(max(int(round(hi - lo)), 1))
    ds.PixelData = img.tobytes()
    ds["PixelData"].VR = "OW"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MINIPACS_SYNTH"
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)

    print(f"make_cr: wrote {out} CR {args.cols}x{args.rows} {args.photometric} "
          f"({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s; "
          f"PatientID={args.patient_id} StudyInstanceUID={study_uid} SOPInstanceUID={sop_uid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
