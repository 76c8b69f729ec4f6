#!/usr/bin/env python3
"""Generate a synthetic, full-size chest CT series (CT Image Storage) for benchmarks.

The images are a SYNTHETIC phantom, not patient data: air outside the body (-1000 HU), an
elliptical trunk of soft tissue (~40 HU) under a subcutaneous fat layer (~-100 HU), two lungs
(~-850 HU) with vessels (~45 HU) running through them, trachea, heart, descending aorta, liver, a
spine (vertebral bodies 700 HU with a 1000 HU cortex, discs, canal, posterior elements), ribs
and sternum, plus seeded Gaussian noise (sigma 10 HU).  The same arguments give byte-identical
files.

Pixel encoding (chosen to match the most common scanner output):
  BitsAllocated 16, BitsStored 12, HighBit 11, PixelRepresentation 0 (unsigned),
  RescaleSlope 1, RescaleIntercept -1024, so HU = stored - 1024 and stored = 0..4095
  (HU -1024..3071).  Transfer syntax Explicit VR Little Endian.

Geometry: axial slices, ImageOrientationPatient 1\\0\\0\\0\\1\\0 (LPS: +x patient left, +y
posterior), head first supine, InstanceNumber 1 is the most cranial slice and
ImagePositionPatient z / SliceLocation decrease by --spacing (default 1.25 mm) per slice.
PixelSpacing is 358.4 mm / --size (0.7 mm at 512) so the field of view stays the same at any
matrix size; the anatomy is laid out along the scan so that any slice count covers the whole
chest (apex at the first slice, upper abdomen at the last).

Landmarks (mm from the isocentre, used by tests): lung centres at x = +/-72, y = -5 in the
middle slice; the image corners are air.

Example:  scripts/make_ct_series.py --out /tmp/ct300            (300 x 512x512, ~158 MB)
          scripts/make_ct_series.py --out /tmp/ct3 --slices 3 --size 64
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

FOV_MM = 358.4
NOISE_HU = 10.0
HU_AIR, HU_FAT, HU_TISSUE, HU_LUNG = -1000.0, -100.0, 40.0, -850.0
HU_BLOOD, HU_HEART, HU_DISC, HU_LIVER = 45.0, 50.0, 90.0, 60.0
HU_CANCELLOUS, HU_CORTEX, HU_RIB = 700.0, 1000.0, 800.0
LUNG_CX, LUNG_CY = 72.0, -5.0
VERTEBRA_PERIOD_MM = 26.0


def det_uid(*parts: object) -> str:
    return generate_uid(prefix=PYDICOM_ROOT_UID, entropy_srcs=["minipacs-ct"] + [str(p) for p in parts])


def _h(seed: int, what: str) -> int:
    return int(hashlib.sha256(f"{seed}:{what}".encode()).hexdigest()[:12], 16)


class Canvas:
    """A float32 HU image with mm coordinates and bounding-box painters (cheap per slice)."""

    def __init__(self, size: int, spacing: float):
        self.size, self.ps = size, spacing
        self.origin = -(size - 1) / 2.0 * spacing  # mm of pixel (0, 0) centre
        self.coord = (self.origin + np.arange(size, dtype=np.float32) * spacing).astype(np.float32)
        self.img = np.empty((size, size), np.float32)

    def _box(self, cx: float, cy: float, rx: float, ry: float):
        c0 = max(int(np.floor((cx - rx - self.origin) / self.ps)), 0)
        c1 = min(int(np.ceil((cx + rx - self.origin) / self.ps)) + 1, self.size)
        r0 = max(int(np.floor((cy - ry - self.origin) / self.ps)), 0)
        r1 = min(int(np.ceil((cy + ry - self.origin) / self.ps)) + 1, self.size)
        if c0 >= c1 or r0 >= r1:
            return None
        return slice(r0, r1), slice(c0, c1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float):
        """(row slice, col slice, mask) of the ellipse inside its bounding box, or None."""
        if rx <= 0 or ry <= 0:
            return None
        box = self._box(cx, cy, rx, ry)
        if box is None:
            return None
        sr, sc = box
        x = (self.coord[sc] - cx) / rx
        y = (self.coord[sr] - cy) / ry
        mask = (y[:, None] ** 2 + x[None, :] ** 2) <= 1.0
        return sr, sc, mask

    def paint(self, cx, cy, rx, ry, value, within: np.ndarray | None = None) -> None:
        e = self.ellipse(cx, cy, rx, ry)
        if e is None:
            return
        sr, sc, mask = e
        if within is not None:
            mask = mask & within[sr, sc]
        self.img[sr, sc][mask] = value

    def mask(self, cx, cy, rx, ry, out: np.ndarray) -> None:
        e = self.ellipse(cx, cy, rx, ry)
        if e is not None:
            sr, sc, m = e
            out[sr, sc] |= m


@dataclass
class Vessel:
    """A straight tube from the hilum (absolute mm) to the periphery (in lung semi-axes)."""

    side: float  # -1 right lung, +1 left lung
    t_h: float  # scan position (0..1) of the hilum end
    t_p: float  # scan position of the peripheral end
    hilum: tuple[float, float]
    periph: tuple[float, float]
    r_h: float
    r_p: float


def make_vessels(rng: np.random.Generator, per_lung: int = 80) -> list[Vessel]:
    out = []
    for side in (-1.0, 1.0):
        for _ in range(per_lung):
            t_h = rng.uniform(0.42, 0.58)
            t_p = rng.uniform(0.10, 0.35) if rng.random() < 0.45 else rng.uniform(0.62, 0.88)
            hilum = (side * rng.uniform(28, 40), rng.uniform(-20, 10))
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.35, 0.8)
            periph = (np.cos(ang) * rad, np.sin(ang) * rad)
            out.append(Vessel(side, t_h, t_p, hilum, periph,
                              rng.uniform(2.0, 4.5), rng.uniform(0.7, 1.3)))
    return out


def lung_axes(t: float) -> tuple[float, float]:
    u = (t - 0.50) / 0.44
    if abs(u) >= 1:
        return 0.0, 0.0
    s = (1 - u * u) ** 0.5
    s *= 0.75 + 0.25 * t  # bases wider than apices
    return 62.0 * s, 82.0 * s ** 0.8


def render_slice(cv: Canvas, t: float, z: float, vessels: list[Vessel]) -> np.ndarray:
    img = cv.img
    img.fill(HU_AIR)
    bump = float(np.sin(np.pi * min(max(t, 0.0), 1.0)))
    a, b, cy = 148.0 + 20.0 * bump, 104.0 + 14.0 * bump, 5.0
    cv.paint(0, cy, a, b, HU_FAT)
    ai, bi = a - 13.0, b - 11.0
    cv.paint(0, cy, ai, bi, HU_TISSUE)

    if t >= 0.72:  # liver dome under the right lung base
        g = min((t - 0.72) / 0.2, 1.0) ** 0.5
        cv.paint(-45.0, 5.0, 100.0 * g, 85.0 * g, HU_LIVER)

    # lungs
    lung = np.zeros_like(img, dtype=bool)
    lx, ly = lung_axes(t)
    for side in (-1.0, 1.0):
        cv.mask(side * LUNG_CX, LUNG_CY, lx, ly, lung)
    img[lung] = HU_LUNG
    for v in vessels:
        lo, hi = min(v.t_h, v.t_p), max(v.t_h, v.t_p)
        if lx == 0 or not (lo <= t <= hi):
            continue
        f = (t - v.t_h) / (v.t_p - v.t_h)
        px = v.side * LUNG_CX + v.periph[0] * lx
        py = LUNG_CY + v.periph[1] * ly
        x = v.hilum[0] + f * (px - v.hilum[0])
        y = v.hilum[1] + f * (py - v.hilum[1])
        r = v.r_h + f * (v.r_p - v.r_h)
        cv.paint(x, y, r, r, HU_BLOOD, within=lung)

    # mediastinum
    if t < 0.38:
        cv.paint(0, -12.0, 9.0, 8.0, HU_AIR)  # trachea
    if 0.42 <= t <= 0.88:
        h = float(np.sin(np.pi * (t - 0.42) / 0.46)) ** 0.5
        cv.paint(18.0, -22.0, 58.0 * h, 46.0 * h, HU_HEART)
    if t >= 0.20:
        cv.paint(24.0, 46.0, 12.0, 12.0, HU_BLOOD)  # descending aorta

    # spine: vertebral body, disc, canal, posterior elements
    phase = z % VERTEBRA_PERIOD_MM
    vy = cy + b - 58.0
    if phase < 5.0:
        cv.paint(0, vy, 18.0, 16.0, HU_DISC)
    else:
        cv.paint(0, vy, 18.0, 16.0, HU_CORTEX)
        cv.paint(0, vy, 15.5, 13.5, HU_CANCELLOUS)
        if 8.0 <= phase <= 20.0:
            cv.paint(0, vy + 30.0, 15.0, 13.0, HU_CORTEX)  # lamina ring
            cv.paint(0, vy + 44.0, 5.0, 12.0, HU_CORTEX)  # spinous process
    cv.paint(0, vy + 27.0, 8.0, 8.0, 15.0)  # spinal canal (CSF)

    # ribs and sternum
    if 0.04 <= t <= 0.86:
        for k, ang in enumerate(np.deg2rad([35, 60, 85, 110, 135, 155])):
            for side in (-1.0, 1.0):
                if (z + 7.0 * k) % 30.0 < 12.0:
                    x = side * (ai - 7.0) * np.sin(ang)
                    y = cy - (bi - 7.0) * np.cos(ang)
                    cv.paint(x, y, 6.0, 4.5, HU_RIB)
    if 0.20 <= t <= 0.75:
        cv.paint(0, cy - bi + 8.0, 14.0, 6.0, HU_CORTEX)
    return img


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Write a synthetic chest CT series (HU phantom).")
    ap.add_argument("--out", required=True, help="output directory (created)")
    ap.add_argument("--slices", type=int, default=300, help="number of slices (default 300)")
    ap.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    ap.add_argument("--seed", type=int, default=1, help="RNG / UID seed (default 1)")
    ap.add_argument("--spacing", type=float, default=1.25, help="slice spacing mm (default 1.25)")
    ap.add_argument("--patient-name", default="Nguyễn^Thị Lan", help="DICOM PN, UTF-8")
    ap.add_argument("--patient-id", default=None, help="default CT-SYN-<seed>")
    ap.add_argument("--study-uid", default=None, help="default: derived from seed and patient id")
    ap.add_argument("--series-number", type=int, default=2)
    ap.add_argument("--prefix", default="CT", help="file name prefix (default CT -> CT0001.dcm)")
    return ap


def make_template(args, study_uid: str, series_uid: str, for_uid: str) -> Dataset:
    seed = args.seed
    day = dt.date(2025, 1, 2) + dt.timedelta(days=_h(seed, "date") % 300)
    minutes = 7 * 60 + _h(seed, "time") % 600
    date = day.strftime("%Y%m%d")
    tm = f"{minutes // 60:02d}{minutes % 60:02d}{_h(seed, 's') % 60:02d}"
    ps = FOV_MM / args.size

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, tm
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tm
    ds.AccessionNumber = f"A{_h(seed, 'acc') % 10**9:09d}"
    ds.Modality = "CT"
    ds.Manufacturer = "MiniPACS synthetic"
    ds.InstitutionName = "Bệnh viện Mô phỏng"
    ds.ReferringPhysicianName = "Lê^Văn Tâm"
    ds.StationName = "SYNTHCT01"
    ds.StudyDescription = "CT ngực không cản quang (synthetic phantom)"
    ds.SeriesDescription = f"Axial {args.spacing:g}mm STANDARD (synthetic)"
    ds.ManufacturerModelName = "make_ct_series.py"
    ds.PatientName = args.patient_name
    ds.PatientID = args.patient_id
    birth = dt.date(1950, 1, 1) + dt.timedelta(days=_h(seed, "birth") % (50 * 365))
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if _h(seed, "sex") % 2 else "M"
    ds.PatientAge = f"{(day - birth).days // 365:03d}Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{args.spacing:g}"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{FOV_MM:g}"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.XRayTubeCurrent = 200
    ds.ConvolutionKernel = "STANDARD"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(_h(seed, "sid") % 100000)
    ds.SeriesNumber = args.series_number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = args.size
    ds.PixelSpacing = [f"{ps:.6g}", f"{ps:.6g}"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MINIPACS_SYNTH"
    ds.file_meta = meta
    return ds


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.slices < 1 or args.size < 16:
        raise SystemExit("--slices must be >= 1 and --size >= 16")
    if args.patient_id is None:
        args.patient_id = f"CT-SYN-{args.seed:04d}"
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    study_uid = args.study_uid or det_uid(args.seed, args.patient_id, "study")
    series_uid = det_uid(study_uid, args.seed, args.series_number, args.slices, args.size, "series")
    for_uid = det_uid(series_uid, "frame-of-reference")
    ds = make_template(args, study_uid, series_uid, for_uid)

    rng = np.random.default_rng(args.seed)
    vessels = make_vessels(rng)
    cv = Canvas(args.size, FOV_MM / args.size)
    n = args.slices
    z_top = (n - 1) * args.spacing / 2.0
    pos_xy = f"{cv.origin:.4f}"
    total = 0
    for k in range(n):
        t = k / (n - 1) if n > 1 else 0.5
        z = z_top - k * args.spacing
        hu = render_slice(cv, t, z, vessels)
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(NOISE_HU)
        stored = np.clip(np.rint(hu) + 1024.0, 0, 4095).astype("<u2")

        sop = det_uid(series_uid, k + 1)
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [pos_xy, pos_xy, f"{z:.4f}"]
        ds.SliceLocation = f"{z:.4f}"
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
        path = out / f"{args.prefix}{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size

    secs = time.perf_counter() - t_start
    print(f"make_ct_series: wrote {n} CT slices {args.size}x{args.size} to {out} "
          f"({total / 1e6:.1f} MB) in {secs:.1f} s; PatientID={args.patient_id} "
          f"StudyInstanceUID={study_uid} SeriesInstanceUID={series_uid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
