"""Frame byte ranges and conversion to uncompressed, checked against pydicom on every sample."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from pacs.pixeldata import (
    EXPLICIT_LE, IMPLICIT_LE, ConversionError, frame_bytes, native_frame, to_native,
)
from pacs.store.metadata import build_entry

SAMPLES = Path(__file__).resolve().parent.parent / "sample_dicom"
IMAGES = [p for p in sorted(SAMPLES.rglob("*.dcm")) if "PixelData" in pydicom.dcmread(p, stop_before_pixels=False)]
LOSSLESS = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
            "image_dfl.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"]


def sample(name: str) -> Path:
    return next(SAMPLES.rglob(name))


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_frame_ranges_give_the_stored_frames(path: Path) -> None:
    raw = path.read_bytes()
    entry = build_entry(raw)
    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1.99":
        assert entry.frames is None  # deflated: no byte ranges, whole-object reads instead
        return
    assert entry.frames is not None and entry.frames.count == n

    def read(offset: int, length: int) -> bytes:
        return raw[offset:offset + length]

    got = [frame_bytes(read, entry.frames, i) for i in range(1, n + 1)]
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        assert got == list(generate_frames(ds.PixelData, number_of_frames=n))
    else:
        # octet-stream frames are little endian: compare with the decoded pixels' bytes
        arr = ds.pixel_array.reshape((n, -1)) if n > 1 else ds.pixel_array.reshape((1, -1))
        if int(ds.get("PlanarConfiguration", 0) or 0) == 0:
            expected = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arr]
            assert got == expected


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.parametrize("target", [EXPLICIT_LE, IMPLICIT_LE])
def test_to_native_keeps_the_pixels(name: str, target: str) -> None:
    path = sample(name)
    out = pydicom.dcmread(io.BytesIO(to_native(path.read_bytes(), target)))
    original = pydicom.dcmread(path)
    assert out.file_meta.TransferSyntaxUID == target
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(out.pixel_array, original.pixel_array)


def test_native_frame_of_a_compressed_multiframe() -> None:
    path = sample("emri_small_jpeg_ls_lossless.dcm")
    ds = pydicom.dcmread(path)
    third = native_frame(path.read_bytes(), 3)
    assert third == ds.pixel_array[2].astype("<u2").tobytes()


def test_conversion_errors_are_reported() -> None:
    with pytest.raises(ConversionError):
        to_native(sample("CT_small.dcm").read_bytes(), "1.2.840.10008.1.2.4.50")
    with pytest.raises(ConversionError):
        to_native(b"DICM but not really", EXPLICIT_LE)
