"""pacs.render: every sample image against DCMTK's dcm2pnm, plus the pipeline's edge cases.

References come from ``/usr/bin/dcm2pnm`` with the same window, frame and options; how
compressed files are fed to it (DCMTK's own JPEG/JPEG-LS decompressors, GDCM for JPEG
2000 and segmented palettes) is described in ``tests/fixtures/render_refs.py``.

Tolerances, and why:

* 1 grey level for every pixel when the decoders are bit-exact (native, deflated, RLE,
  JPEG lossless, JPEG-LS, JPEG 2000 reversible): PS3.3 C.11.2.1.2 defines a real-valued
  output; dcm2pnm truncates it to an integer and pacs.render rounds it, so the two differ
  by at most 1 (and by about +0.5 on average where the window ramps).
* JPEG baseline/extended (DCT) and irreversible JPEG 2000 (9/7 wavelet): the standards
  allow decoders to differ by rounding in the inverse transform and in chroma
  upsampling, and the decoders here are different builds (IJG libjpeg in DCMTK vs
  libjpeg-turbo/GDCM in pydicom; GDCM's OpenJPEG vs pylibjpeg-openjpeg). A one-unit
  decoder difference becomes 255 / (width - 1) grey levels after a narrow window, so
  these get max 4 and mean 1.0 (the mean includes the 0.5 truncation offset above).
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array

from pacs.errors import InvalidInstance, PacsError, StorageUnavailable
from pacs.render import (
    BadRenderRequest,
    Frame,
    Instance,
    NotRenderable,
    Viewport,
    Window,
    encode,
    thumbnail,
)
from tests.fixtures.render_refs import Dcm2pnm, gray_image, lut_item, part10, sequence

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_dicom"
SAMPLE_FILES = sorted(SAMPLES.rglob("*.dcm"))

#: Sample files that are not images (SR, RTSTRUCT, ... without Pixel Data). The sample set
#: has none today; test_sample_set_is_what_we_expect fails if that changes unnoticed.
NON_IMAGES: frozenset[str] = frozenset()

#: Lossy transfer syntaxes whose decoding differs between implementations (see above).
#: JPEG-LS near-lossless (.81) is not here: its decoding is exact integer arithmetic.
DECODER_DEPENDENT = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.91",
}
MONO = ("MONOCHROME1", "MONOCHROME2")


def rel(path: Path) -> str:
    return path.relative_to(SAMPLES).as_posix()


def header(path: Path) -> Dataset:
    return dcmread(path, stop_before_pixels=True)


def frame_count(path: Path) -> int:
    return max(1, int(header(path).get("NumberOfFrames") or 1))


@functools.cache
def instance(path: Path) -> Instance:
    return Instance.from_bytes(path.read_bytes())


@functools.cache
def frame(path: Path, number: int) -> Frame:
    return instance(path).frame(number)


@pytest.fixture(scope="session")
def dcm2pnm(tmp_path_factory: pytest.TempPathFactory) -> Dcm2pnm:
    """DCMTK's reference renderer (fails, never skips, if DCMTK or GDCM is missing)."""
    return Dcm2pnm(tmp_path_factory.mktemp("dcm2pnm"))


def assert_close(
    mine: Image.Image, ref: np.ndarray, *, lossy: bool = False, slack: int = 0
) -> None:
    got = np.asarray(mine).astype(np.int32)
    assert got.shape == ref.shape, f"shape {got.shape} != dcm2pnm {ref.shape}"
    diff = np.abs(got - ref.astype(np.int32))
    worst, mean = int(diff.max()), float(diff.mean())
    if lossy:
        assert worst <= 4 + slack and mean <= 1.0, f"max {worst}, mean {mean:.3f}"
    else:
        over = int((diff > 1).sum())
        assert worst <= 1 + slack, f"max {worst} ({over} pixels > 1), mean {mean:.3f}"


def modality_slack(path: Path, width: float | None) -> int:
    """Extra tolerance where dcm2pnm quantises modality values.

    dcm2pnm keeps rescaled values in an integer type, truncating a non-integer result
    (e.g. Rescale Slope 0.684: stored 1573 -> 1275.932 -> 1275); pacs.render keeps the
    real value, as PS3.3 C.11.1 defines it. Less than one modality unit of difference
    moves a pixel on the window ramp by at most 255 / (width - 1) levels.
    """
    ds = header(path)
    slope = float(ds.get("RescaleSlope") or 1)
    intercept = float(ds.get("RescaleIntercept") or 0)
    if slope.is_integer() and intercept.is_integer() or width is None or width <= 1:
        return 0
    return math.ceil(255 / (width - 1))


def opt(value: float) -> str:
    return repr(float(value))


# --------------------------------------------------------------------------- sample files


def test_sample_set_is_what_we_expect() -> None:
    """34 files; the ones without pixel data are exactly NON_IMAGES (no silent skips)."""
    assert len(SAMPLE_FILES) == 34
    without_pixels = {rel(p) for p in SAMPLE_FILES if "PixelData" not in dcmread(p)}
    assert without_pixels == NON_IMAGES
    for name in NON_IMAGES:
        with pytest.raises(NotRenderable):
            Instance.from_bytes((SAMPLES / name).read_bytes())


CASES = [
    pytest.param(path, number, id=f"{rel(path)}#{number}")
    for path in SAMPLE_FILES
    if rel(path) not in NON_IMAGES
    for number in sorted({1, frame_count(path)})  # multi-frame: first and last frame
]


def default_options(path: Path) -> list[str]:
    """dcm2pnm options that select the VOI pacs.render uses when no window is asked for."""
    ds = header(path)
    if ds.PhotometricInterpretation not in MONO:
        return []
    if "WindowCenter" in ds:
        return ["+Wi", "1"]
    # Enhanced images carry the window in the Frame VOI LUT functional group (PS3.3
    # C.7.6.16.2.10), which dcm2pnm 3.6.7 does not read: pass it explicitly.
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and "FrameVOILUTSequence" in shared[0]:
        voi = shared[0].FrameVOILUTSequence[0]
        return ["+Ww", opt(voi.WindowCenter), opt(voi.WindowWidth)]
    return ["+Wm"]  # no window, no VOI LUT: both fall back to the frame's min/max


@pytest.mark.parametrize(("path", "number"), CASES)
def test_default_render_matches_dcm2pnm(dcm2pnm: Dcm2pnm, path: Path, number: int) -> None:
    fr = frame(path, number)
    mine = fr.render()
    inst = instance(path)
    assert mine.size == (inst.columns, inst.rows)
    assert mine.mode == ("L" if inst.photometric in MONO else "RGB")
    lossy = str(header(path).file_meta.TransferSyntaxUID) in DECODER_DEPENDENT
    window = fr.default_window
    slack = modality_slack(path, window.width if window else None)
    assert_close(mine, dcm2pnm.render(path, *default_options(path), frame=number),
                 lossy=lossy, slack=slack)


@pytest.mark.parametrize(("path", "number"), CASES)
def test_explicit_window_matches_dcm2pnm(dcm2pnm: Dcm2pnm, path: Path, number: int) -> None:
    fr = frame(path, number)
    if instance(path).photometric in MONO:
        # A window over part of this frame's range, so both clipping ends and the ramp show.
        span = fr.minmax_window()  # type: ignore[attr-defined]
        window = Window(round(span.center + span.width / 8, 1), max(round(span.width / 3, 1), 2.0))
    else:
        window = Window(100, 500)  # colour: no VOI stage, the window must be ignored
        assert np.array_equal(np.asarray(fr.render(window)), np.asarray(fr.render()))
    lossy = str(header(path).file_meta.TransferSyntaxUID) in DECODER_DEPENDENT
    ref = dcm2pnm.render(path, "+Ww", opt(window.center), opt(window.width), frame=number)
    assert_close(fr.render(window), ref, lossy=lossy, slack=modality_slack(path, window.width))


def test_transfer_syntax_variants_render_identically() -> None:
    """Lossless variants of one image (same SOP Instance in the package) give equal pixels."""
    base = np.asarray(frame(SAMPLES / "MR/MR_small.dcm", 1).render(Window(600, 1600)))
    for name in ("MR_small_implicit", "MR_small_expb", "MR_small_RLE",
                 "MR_small_jpeg_ls_lossless", "MR_small_jp2klossless"):
        other = frame(SAMPLES / f"MR/{name}.dcm", 1).render(Window(600, 1600))
        assert np.array_equal(np.asarray(other), base), name
    for number in (1, 5, 10):
        plain = frame(SAMPLES / "MR/emri_small.dcm", number).render()
        jpls = frame(SAMPLES / "MR/emri_small_jpeg_ls_lossless.dcm", number).render()
        assert np.array_equal(np.asarray(plain), np.asarray(jpls)), number


def test_lossy_j2k_is_close_to_its_lossless_original() -> None:
    lossless = np.asarray(frame(SAMPLES / "MR/MR2_J2KR.dcm", 1).render()).astype(int)
    lossy = np.asarray(frame(SAMPLES / "MR/MR2_J2KI.dcm", 1).render()).astype(int)
    diff = np.abs(lossless - lossy)
    assert 0 < diff.mean() < 2.0


def test_enhanced_frames_use_their_functional_groups() -> None:
    """PS3.3 C.7.6.16: the Frame VOI LUT and Pixel Value Transformation macros apply."""
    path = SAMPLES / "CT/eCT_Supplemental.dcm"
    assert instance(path).windows() == [Window(49, 102)]
    for number in (1, 2):
        assert frame(path, number).default_window == Window(49, 102)
    raw = pixel_array(dcmread(path), index=1)
    # Shared Pixel Value Transformation: slope 1, intercept -1024
    assert frame(path, 2).modality_value(100, 200) == float(raw[200, 100]) - 1024.0


def test_multiframe_frames_differ_and_are_bounded() -> None:
    path = SAMPLES / "US/examples_ybr_color.dcm"
    assert instance(path).number_of_frames == 30
    first, last = (np.asarray(frame(path, n).render()) for n in (1, 30))
    assert not np.array_equal(first, last)
    for bad in (0, 31, -1):
        with pytest.raises(BadRenderRequest):
            instance(path).frame(bad)
    with pytest.raises(BadRenderRequest):
        instance(SAMPLES / "CT/CT_small.dcm").frame(2)


# --------------------------------------------------------------------------- generated CT / CR


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic 512x512 CT slice (stored 0..4095, HU = stored - 1024, window 40/400)."""
    from scripts import make_ct_series

    out = tmp_path_factory.mktemp("ct")
    assert make_ct_series.main(["--out", str(out), "--slices", "1"]) == 0
    return out / "CT0001.dcm"


@pytest.mark.parametrize("window", [None, Window(-600, 1500), Window(400, 1800), Window(40, 1)])
def test_generated_ct_matches_dcm2pnm(
    dcm2pnm: Dcm2pnm, ct_slice: Path, window: Window | None
) -> None:
    fr = Instance.from_bytes(ct_slice.read_bytes()).frame(1)
    options = ["+Wi", "1"] if window is None else ["+Ww", opt(window.center), opt(window.width)]
    assert_close(fr.render(window), dcm2pnm.render(ct_slice, *options))


def test_ct_modality_values_are_hounsfield_units(ct_slice: Path) -> None:
    ds = dcmread(ct_slice)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    fr = Instance.from_bytes(ct_slice.read_bytes()).frame(1)
    for x, y in [(0, 0), (511, 511), (256, 256), (100, 300), (400, 120), (37, 460)]:
        assert fr.modality_value(x, y) == pytest.approx(hu[y, x])
    corner = fr.modality_value(0, 0)
    assert isinstance(corner, float) and -1100 < corner < -900  # the corners are air
    for x, y in [(-1, 0), (0, -1), (512, 0), (0, 512)]:
        with pytest.raises(BadRenderRequest):
            fr.modality_value(x, y)


def test_generated_monochrome1_cr_matches_dcm2pnm(dcm2pnm: Dcm2pnm, tmp_path: Path) -> None:
    from scripts import make_cr

    path = tmp_path / "cr.dcm"
    assert make_cr.main(["--out", str(path), "--rows", "300", "--cols", "256",
                         "--photometric", "MONOCHROME1"]) == 0
    inst = Instance.from_bytes(path.read_bytes())
    assert inst.spacing() == (0.175 * 2048 / 256, 0.175 * 2048 / 256, "ImagerPixelSpacing")
    fr = inst.frame(1)
    assert_close(fr.render(), dcm2pnm.render(path, "+Wi", "1"))
    assert_close(fr.render(Window(2000, 3000)), dcm2pnm.render(path, "+Ww", "2000.0", "3000.0"))
    # The generator stores MONOCHROME1 as 4095 - value with a mirrored window: once
    # inverted it must look like the MONOCHROME2 original (direct exposure black).
    m2 = tmp_path / "cr2.dcm"
    assert make_cr.main(["--out", str(m2), "--rows", "300", "--cols", "256"]) == 0
    original = np.asarray(Instance.from_bytes(m2.read_bytes()).frame(1).render()).astype(int)
    inverted = np.asarray(fr.render()).astype(int)
    assert np.abs(inverted - original).max() <= 1
    assert inverted[0, 0] == 0 and inverted.max() == 255


# --------------------------------------------------------------------------- VOI functions


def ramp(values: list[int]) -> bytes:
    return part10(gray_image(np.array([values], dtype=np.uint16)))


def test_linear_window_formula_by_hand(dcm2pnm: Dcm2pnm) -> None:
    """PS3.3 C.11.2.1.2.1 with c=10, w=4: x <= 8 -> 0, x > 11 -> 255, in between
    ((x - 9.5) / 3 + 0.5) * 255: 9 -> 85, 10 -> 170."""
    raw = ramp(list(range(6, 15)))
    got = np.asarray(Instance.from_bytes(raw).frame(1).render(Window(10, 4)))[0]
    assert got.tolist() == [0, 0, 0, 85, 170, 255, 255, 255, 255]
    assert_close(Instance.from_bytes(raw).frame(1).render(Window(10, 4)),
                 dcm2pnm.render_bytes(raw, "+Ww", "10", "4"))


def test_linear_exact_formula_by_hand() -> None:
    """PS3.3 C.11.2.1.3.2 with c=10, w=4: x <= 8 -> 0, x > 12 -> 255, else
    ((x - 10) / 4 + 0.5) * 255: 9 -> 63.75, 10 -> 127.5, 11 -> 191.25, 12 -> 255."""
    window = Window(10, 4, "LINEAR_EXACT")
    x = np.arange(6, 15, dtype=np.float64)
    assert window.apply(x).tolist() == [0, 0, 0, 63.75, 127.5, 191.25, 255, 255, 255]
    got = np.asarray(Instance.from_bytes(ramp(list(range(6, 15)))).frame(1).render(window))[0]
    assert got.tolist() == [0, 0, 0, 64, 128, 191, 255, 255, 255]


def test_sigmoid_formula_by_hand_and_dcm2pnm(dcm2pnm: Dcm2pnm) -> None:
    """PS3.3 C.11.2.1.3.1: y = 255 / (1 + exp(-4 (x - c) / w))."""
    c, w = 1000.0, 400.0
    xs = [600, 900, 1000, 1100, 1400, 0, 4095]
    expected = [255 / (1 + math.exp(-4 * (x - c) / w)) for x in xs]
    window = Window(c, w, "sigmoid")
    assert window.function == "SIGMOID"
    assert window.apply(np.array(xs, dtype=np.float64)) == pytest.approx(expected)
    raw = ramp(xs)
    got = np.asarray(Instance.from_bytes(raw).frame(1).render(window))[0]
    assert got.tolist() == [math.floor(v + 0.5) for v in expected]
    assert got.tolist()[2] == 128  # the center maps to mid-grey (127.5)
    full = np.arange(4096, dtype=np.uint16).reshape(64, 64)
    raw = part10(gray_image(full))
    assert_close(Instance.from_bytes(raw).frame(1).render(window),
                 dcm2pnm.render_bytes(raw, "+Ww", "1000", "400", "+Wfs"))
    # the file's own VOI LUT Function (0028,1056) is honoured too
    raw = part10(gray_image(full, WindowCenter="1000", WindowWidth="400", VOILUTFunction="SIGMOID"))
    fr = Instance.from_bytes(raw).frame(1)
    assert fr.default_window == window
    assert_close(fr.render(), dcm2pnm.render_bytes(raw, "+Wi", "1"))


# --------------------------------------------------------------------------- modality / VOI LUTs


def test_modality_lut_sequence_wins_over_rescale(dcm2pnm: Dcm2pnm) -> None:
    """PS3.3 C.11.1: a Modality LUT Sequence (here non-monotonic) maps stored values."""
    table = [int(1000 + 3000 * math.sin(i / 700.0) ** 2) for i in range(4096)]
    pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    ds = gray_image(pixels, ModalityLUTSequence=sequence(lut_item(0, table, 16)))
    raw = part10(ds)
    fr = Instance.from_bytes(raw).frame(1)
    assert fr.modality_value(5, 3) == table[int(pixels[3, 5])]
    assert_close(fr.render(), dcm2pnm.render_bytes(raw, "+Wm"))
    assert_close(fr.render(Window(2500, 2000)), dcm2pnm.render_bytes(raw, "+Ww", "2500", "2000"))
    # Both present (not allowed by the IOD, seen in the wild): the LUT is used.
    ds.RescaleSlope, ds.RescaleIntercept = "2", "1000"
    fr = Instance.from_bytes(part10(ds)).frame(1)
    assert fr.modality_value(5, 3) == table[int(pixels[3, 5])]


def test_voi_lut_sequence_when_no_window(dcm2pnm: Dcm2pnm) -> None:
    """PS3.3 C.11.2.1.1: entries 0..4095 (12 bits) scaled to 0..255; below/above clamp."""
    table = [min(4095, int((i / 2047.0) ** 0.5 * 4095)) for i in range(2048)]
    pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    for photometric in MONO:
        voi = sequence(lut_item(1000, table, 12))
        ds = gray_image(pixels, photometric=photometric, VOILUTSequence=voi)
        raw = part10(ds)
        fr = Instance.from_bytes(raw).frame(1)
        assert fr.default_window is None
        assert_close(fr.render(), dcm2pnm.render_bytes(raw, "+Wl", "1"))
    # A window in the file comes first (C.11.2: the first window, else the first VOI LUT).
    ds = gray_image(pixels, WindowCenter="500", WindowWidth="300",
                    VOILUTSequence=sequence(lut_item(1000, table, 12)))
    fr = Instance.from_bytes(part10(ds)).frame(1)
    assert np.array_equal(np.asarray(fr.render()), np.asarray(fr.render(Window(500, 300))))


def test_bits_above_high_bit_are_ignored(dcm2pnm: Dcm2pnm) -> None:
    """PS3.5 8.1.1: only the Bits Stored bits ending at High Bit are the value."""
    rng = np.random.default_rng(7)
    clean = rng.integers(0, 4096, size=(32, 48), dtype=np.uint16)
    dirty = clean | (rng.integers(0, 16, size=clean.shape, dtype=np.uint16) << 12)
    raw = part10(gray_image(dirty))
    fr = Instance.from_bytes(raw).frame(1)
    ref = Instance.from_bytes(part10(gray_image(clean))).frame(1)
    assert np.array_equal(np.asarray(fr.render()), np.asarray(ref.render()))
    assert fr.modality_value(3, 4) == float(clean[4, 3])
    assert_close(fr.render(Window(2000, 1000)), dcm2pnm.render_bytes(raw, "+Ww", "2000", "1000"))
    # Stored bits in the top of the word (High Bit 15, Bits Stored 12) and garbage below
    low_garbage = rng.integers(0, 16, size=clean.shape, dtype=np.uint16)
    high = gray_image((clean << 4) | low_garbage, HighBit=15)
    raw = part10(high)
    fr = Instance.from_bytes(raw).frame(1)
    assert np.array_equal(np.asarray(fr.render()), np.asarray(ref.render()))
    assert fr.modality_value(3, 4) == float(clean[4, 3])
    assert_close(fr.render(Window(2000, 1000)), dcm2pnm.render_bytes(raw, "+Ww", "2000", "1000"))


def test_signed_12_bit_is_sign_extended(dcm2pnm: Dcm2pnm) -> None:
    values = np.arange(-2048, 2048, dtype=np.int16).reshape(64, 64)
    stored_pattern = (values.view(np.uint16) & 0x0FFF).view(np.int16)  # 12-bit two's complement
    raw = part10(gray_image(stored_pattern, RescaleSlope="1", RescaleIntercept="0"))
    fr = Instance.from_bytes(raw).frame(1)
    assert fr.modality_value(0, 0) == -2048.0
    assert fr.modality_value(63, 63) == 2047.0
    assert_close(fr.render(), dcm2pnm.render_bytes(raw, "+Wm"))
    assert_close(fr.render(Window(0, 1000)), dcm2pnm.render_bytes(raw, "+Ww", "0", "1000"))


def test_wide_32_bit_range_without_lookup_table(dcm2pnm: Dcm2pnm) -> None:
    """A stored range wider than 2^16 (e.g. a 32-bit dose grid) is windowed per pixel."""
    pixels = (np.arange(64 * 64, dtype=np.uint32) * 997).reshape(64, 64)
    raw = part10(gray_image(pixels, bits_stored=32, RescaleSlope="0.001", RescaleIntercept="0"))
    fr = Instance.from_bytes(raw).frame(1)
    assert fr.modality_value(10, 0) == pytest.approx(9.97)
    assert_close(fr.render(), dcm2pnm.render_bytes(raw, "+Wm"))
    assert_close(fr.render(Window(2000, 1500)), dcm2pnm.render_bytes(raw, "+Ww", "2000", "1500"),
                 slack=1)  # dcm2pnm truncates the 0.001-slope modality values (see above)


# --------------------------------------------------------------------------- polarity


@pytest.mark.parametrize(
    ("photometric", "shape", "inverted"),
    [("MONOCHROME2", None, False), ("MONOCHROME2", "IDENTITY", False),
     ("MONOCHROME2", "INVERSE", True), ("MONOCHROME1", None, True),
     ("MONOCHROME1", "INVERSE", True)],
)
def test_polarity_matches_dcm2pnm(
    dcm2pnm: Dcm2pnm, photometric: str, shape: str | None, inverted: bool
) -> None:
    pixels = (np.arange(32 * 64, dtype=np.uint16) * 2).reshape(32, 64)
    ds = gray_image(pixels, photometric=photometric, WindowCenter="2000", WindowWidth="1000")
    if shape:
        ds.PresentationLUTShape = shape
    raw = part10(ds)
    got = np.asarray(Instance.from_bytes(raw).frame(1).render()).astype(int)
    plain = np.asarray(Instance.from_bytes(part10(gray_image(pixels))).frame(1)
                       .render(Window(2000, 1000))).astype(int)
    assert np.array_equal(got, 255 - plain if inverted else plain)
    assert_close(Image.fromarray(got.astype(np.uint8)), dcm2pnm.render_bytes(raw, "+Wi", "1"))


def test_monochrome1_with_identity_shape_still_inverts(dcm2pnm: Dcm2pnm) -> None:
    """A deliberate deviation from dcm2pnm. PS3.3 C.11.6.1 defines IDENTITY as an identity
    "other than to account for the value of Photometric Interpretation", so MONOCHROME1
    (minimum = white) is still inverted once; dcm2pnm lets IDENTITY cancel the inversion
    and shows such (non-conformant) files as negatives."""
    pixels = (np.arange(32 * 64, dtype=np.uint16) * 2).reshape(32, 64)
    plain_m1 = part10(gray_image(pixels, photometric="MONOCHROME1",
                                 WindowCenter="2000", WindowWidth="1000"))
    odd = part10(gray_image(pixels, photometric="MONOCHROME1", PresentationLUTShape="IDENTITY",
                            WindowCenter="2000", WindowWidth="1000"))
    got = np.asarray(Instance.from_bytes(odd).frame(1).render())
    assert np.array_equal(got, np.asarray(Instance.from_bytes(plain_m1).frame(1).render()))
    assert got[0, 0] == 255  # the lowest value is white
    assert dcm2pnm.render_bytes(odd, "+Wi", "1")[0, 0] == 0  # what dcm2pnm does instead


# --------------------------------------------------------------------------- colour


def palette_image(indices: np.ndarray, first: int, red: list[int], green: list[int],
                  blue: list[int], bits: int = 16) -> bytes:
    ds = gray_image(indices, photometric="PALETTE COLOR", bits_stored=8 * indices.dtype.itemsize)
    for colour, data in (("Red", red), ("Green", green), ("Blue", blue)):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [len(data), first, bits])
        setattr(ds, f"{colour}PaletteColorLookupTableData", np.asarray(data, "<u2").tobytes())
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"
    return part10(ds)


def test_palette_color_by_hand(dcm2pnm: Dcm2pnm) -> None:
    """PS3.3 C.7.6.3.1.5: indices below the first entry use the first, above the last the
    last; 16-bit entries keep their high byte on an 8-bit display."""
    indices = np.array([[5, 10, 11, 12, 13, 200]], dtype=np.uint8)
    raw = palette_image(indices, 10, red=[0x0000, 0x4000, 0x8000, 0xFF00],
                        green=[0xFFFF, 0x8000, 0x4000, 0x0000], blue=[0x1234] * 4)
    fr = Instance.from_bytes(raw).frame(1)
    got = np.asarray(fr.render())
    assert got[0, :, 0].tolist() == [0x00, 0x00, 0x40, 0x80, 0xFF, 0xFF]
    assert got[0, :, 1].tolist() == [0xFF, 0xFF, 0x80, 0x40, 0x00, 0x00]
    assert got[0, :, 2].tolist() == [0x12] * 6
    assert fr.modality_value(2, 0) == (0x40, 0x80, 0x12)
    assert np.array_equal(got, dcm2pnm.render_bytes(raw))


def test_colour_frames_are_rgb_whatever_the_encoding() -> None:
    """YBR_FULL_422 (JPEG), YBR_ICT (JPEG 2000), RGB planar 0 and 1, palettes -> RGB."""
    for name in ("US/examples_ybr_color.dcm", "US/US1_J2KI.dcm", "US/examples_rgb_color.dcm",
                 "US/ExplVR_BigEnd.dcm", "US/examples_palette.dcm", "US/gdcm-US-ALOKA-16.dcm"):
        fr = frame(SAMPLES / name, 1)
        image = fr.render(Window(40, 400))
        assert image.mode == "RGB", name
        x, y = fr.columns // 2, fr.rows // 2
        assert fr.modality_value(x, y) == tuple(int(v) for v in np.asarray(image)[y, x]), name
    assert header(SAMPLES / "US/ExplVR_BigEnd.dcm").PlanarConfiguration == 1


# --------------------------------------------------------------------------- header queries


def test_windows_are_the_files_presets() -> None:
    assert instance(SAMPLES / "MR/MR-SIEMENS-DICOM-WithOverlays.dcm").windows() == [
        Window(450, 790), Window(200, 443)
    ]
    assert instance(SAMPLES / "CT/CT_small.dcm").windows() == []
    assert instance(SAMPLES / "US/examples_rgb_color.dcm").windows() == []
    siemens = frame(SAMPLES / "MR/MR-SIEMENS-DICOM-WithOverlays.dcm", 1)
    assert siemens.default_window == Window(450, 790)


def test_spacing_sources() -> None:
    """PS3.3 10.7.1.3: Pixel Spacing (patient) before Imager Pixel Spacing (detector)."""
    assert instance(SAMPLES / "CT/CT_small.dcm").spacing() == (0.661468, 0.661468, "PixelSpacing")
    assert instance(SAMPLES / "patient_77654033/CR1_6154.dcm").spacing() == (
        0.1, 0.1, "ImagerPixelSpacing")
    assert instance(SAMPLES / "CT/eCT_Supplemental.dcm").spacing() == (
        0.388672, 0.388672, "PixelSpacing")  # from the Pixel Measures functional group
    assert instance(SAMPLES / "CR/RG1_J2KI.dcm").spacing() is None  # Pixel Spacing 0\0
    assert instance(SAMPLES / "US/examples_rgb_color.dcm").spacing() is None
    pixels = np.zeros((4, 4), np.uint16)
    both = gray_image(pixels, PixelSpacing=["0.5", "0.25"], ImagerPixelSpacing=["0.6", "0.3"])
    assert Instance.from_bytes(part10(both)).spacing() == (0.5, 0.25, "PixelSpacing")
    imager = gray_image(pixels, ImagerPixelSpacing=["0.6", "0.3"])
    assert Instance.from_bytes(part10(imager)).spacing() == (0.6, 0.3, "ImagerPixelSpacing")


def test_sizes_for_the_cache() -> None:
    path = SAMPLES / "CT/eCT_Supplemental.dcm"
    assert instance(path).nbytes() >= path.stat().st_size
    assert frame(path, 1).nbytes() >= 512 * 512 * 2  # 16-bit offsets of a 12-bit-range frame
    assert frame(SAMPLES / "US/examples_rgb_color.dcm", 1).nbytes() >= 240 * 320 * 3


def test_header_only_instance_decodes_what_its_reader_gives() -> None:
    """Instance.from_header + with_reader (pacs.frames reads ranges through it): the frame is
    the whole file's, each decode asks the reader for its frame, storage errors pass through."""
    raw = (SAMPLES / "MR/emri_small.dcm").read_bytes()
    whole = Instance.from_bytes(raw)
    head = Instance.from_header(raw[: whole.pixel_offset])
    assert head is not None and not head.by_frame and head.nbytes() < whole.nbytes()
    step = head.native_frame_length()
    assert step == whole.rows * whole.columns * 2
    asked: list[int] = []

    def reader(index: int) -> bytes:
        asked.append(index)
        start = whole.pixel_offset + index * step
        return raw[start:start + step]

    inst = head.with_reader(reader)
    assert inst.by_frame and not head.by_frame  # a copy: the header-only instance is unchanged
    assert np.array_equal(np.asarray(inst.frame(7).render()), np.asarray(whole.frame(7).render()))
    assert asked == [6]

    def store_down(index: int) -> bytes:
        raise StorageUnavailable("blob store unreachable")

    with pytest.raises(StorageUnavailable):  # a 503 for the client, not "not renderable"
        head.with_reader(store_down).frame(1)
    with pytest.raises(NotRenderable):
        head.with_reader(lambda index: b"\0" * 3).frame(1)
    with pytest.raises(ValueError):
        whole.with_reader(reader)


# --------------------------------------------------------------------------- errors


def reencapsulated(path: Path, keep: float) -> bytes:
    """``path`` with every encapsulated frame cut to ``keep`` of its length."""
    ds = dcmread(path)
    count = int(ds.get("NumberOfFrames") or 1)
    frames = [f[: max(1, int(len(f) * keep))]
              for f in generate_frames(ds.PixelData, number_of_frames=count)]
    ds.PixelData = encapsulate(frames)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.parametrize("name", ["US/examples_ybr_color.dcm", "US/JPGLosslessP14SV1_1s_1f_8b.dcm",
                                  "MR/MR_small_jp2klossless.dcm", "MR/MR_small_RLE.dcm",
                                  "MR/MR_small_jpeg_ls_lossless.dcm"])
def test_truncated_compressed_frames_are_not_renderable(name: str) -> None:
    inst = Instance.from_bytes(reencapsulated(SAMPLES / name, 0.4))
    with pytest.raises(NotRenderable):
        inst.frame(1)


def test_bad_instances_raise_domain_errors() -> None:
    pixels = np.zeros((8, 8), np.uint16)
    no_pixels = gray_image(pixels)
    del no_pixels.PixelData
    with pytest.raises(NotRenderable, match="no Pixel Data"):
        Instance.from_bytes(part10(no_pixels))
    short = gray_image(pixels)
    short.PixelData = b"\0" * 64  # 8x8x2 bytes expected
    with pytest.raises(NotRenderable):
        Instance.from_bytes(part10(short)).frame(1)
    floats = gray_image(pixels)
    del floats.PixelData
    floats.FloatPixelData = np.zeros(64, "<f4").tobytes()
    with pytest.raises(NotRenderable):
        Instance.from_bytes(part10(floats))
    with pytest.raises(InvalidInstance):
        Instance.from_bytes(b"not a DICOM file at all" * 10)
    with pytest.raises(InvalidInstance):
        Instance.from_bytes((SAMPLES / "CT/CT_small.dcm").read_bytes()[:300])
    # the web layer maps both families through PacsError; NotRenderable is an InvalidInstance
    assert issubclass(NotRenderable, InvalidInstance) and issubclass(BadRenderRequest, PacsError)


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(("text", "expected"), [
    ("40,400", Window(40, 400, "LINEAR")),
    (" -600 , 1500 ", Window(-600, 1500)),
    ("40.5,400.25,Linear", Window(40.5, 400.25, "LINEAR")),
    ("40,400,linear-exact", Window(40, 400, "LINEAR_EXACT")),
    ("40,400,LINEAR_EXACT", Window(40, 400, "LINEAR_EXACT")),
    ("40,400,sigmoid", Window(40, 400, "SIGMOID")),
    ("40,0.5,sigmoid", Window(40, 0.5, "SIGMOID")),
    ("1e3,2e3", Window(1000, 2000)),
])
def test_window_parse(text: str, expected: Window) -> None:
    assert Window.parse(text) == expected


@pytest.mark.parametrize("text", [
    "", "40", "40,", ",400", "a,400", "40,b", "40,400,gamma", "40,400,linear,x",
    "40,0", "40,0.5", "40,-5", "40,0,sigmoid", "40,0,linear-exact", "nan,400", "40,inf",
])
def test_window_parse_rejects(text: str) -> None:
    with pytest.raises(BadRenderRequest):
        Window.parse(text)


@pytest.mark.parametrize(("text", "expected"), [("512,512", Viewport(512, 512)),
                                                (" 300 , 200 ", Viewport(300, 200))])
def test_viewport_parse(text: str, expected: Viewport) -> None:
    assert Viewport.parse(text) == expected


@pytest.mark.parametrize("text", ["", "512", "a,b", "0,10", "-1,5", "1.5,2", "99999,10",
                                  "10,10,0,0,5,5", "1,2,3"])
def test_viewport_parse_rejects(text: str) -> None:
    with pytest.raises(BadRenderRequest):
        Viewport.parse(text)


def test_viewport_fits_inside_and_keeps_aspect() -> None:
    fr = frame(SAMPLES / "NM/JPEG-LL.dcm", 1)  # 256 wide, 1024 high
    assert fr.render(viewport=Viewport(100, 100)).size == (25, 100)
    assert fr.render(viewport=Viewport(200, 2000)).size == (200, 800)
    assert fr.render(viewport=Viewport(4096, 4096)).size == (256, 1024)  # never enlarged
    small = fr.render(Window(100, 200), Viewport(128, 128))
    assert small.mode == "L" and max(small.size) == 128
    assert abs(small.size[0] / small.size[1] - 0.25) < 0.01
    assert Viewport(1000, 50).fit(1841, 1955) == (47, 50)


def test_thumbnail_size() -> None:
    assert thumbnail(frame(SAMPLES / "NM/JPEG-LL.dcm", 1)).size == (32, 128)
    assert thumbnail(frame(SAMPLES / "US/examples_rgb_color.dcm", 1), 64).size == (64, 48)
    assert thumbnail(frame(SAMPLES / "MR/MR_small.dcm", 1)).size == (64, 64)  # not enlarged


# --------------------------------------------------------------------------- encoding


def test_png_is_lossless() -> None:
    for name in ("MR/MR-SIEMENS-DICOM-WithOverlays.dcm", "US/examples_rgb_color.dcm"):
        image = frame(SAMPLES / name, 1).render()
        data = encode(image, "image/png")
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(io.BytesIO(data)) as back:
            assert back.mode == image.mode
            assert np.array_equal(np.asarray(back), np.asarray(image))


def test_jpeg_quality_changes_size() -> None:
    image = frame(SAMPLES / "MR/MR-SIEMENS-DICOM-WithOverlays.dcm", 1).render()
    low, high = encode(image, "image/jpeg", 20), encode(image, "image/jpeg", 95)
    assert low[:2] == b"\xff\xd8" and len(low) < len(high)
    assert encode(image, "image/jpeg") == encode(image, "image/jpeg", 90)  # the default
    webp = encode(image, "image/webp", 50)
    assert webp[:4] == b"RIFF" and webp[8:12] == b"WEBP"


@pytest.mark.parametrize(("media_type", "quality"), [("image/gif", None), ("text/html", None),
                                                     ("image/jpeg", 0), ("image/jpeg", 101),
                                                     ("image/webp", -5)])
def test_encode_rejects(media_type: str, quality: int | None) -> None:
    image = Image.new("L", (4, 4))
    with pytest.raises(BadRenderRequest):
        encode(image, media_type, quality)


# --------------------------------------------------------------------------- native fast path


def full_path(raw: bytes) -> Instance:
    """The reference: pydicom reads the header and pydicom's decoder decodes the pixels."""
    inst = Instance.from_bytes_full(raw)
    inst._native_dtype = None  # noqa: SLF001 - no frombuffer view: pydicom's decoder
    return inst


def assert_same_rendering(raw: bytes, *, fast: bool, frames: int = 3) -> None:
    """``Instance.from_bytes`` gives exactly what the full pydicom path gives: header values,
    every pixel of every render, modality values."""
    mine, ref = Instance.from_bytes(raw), full_path(raw)
    assert isinstance(mine._ds, dict) is fast  # noqa: SLF001 - which path was taken
    for attr in ("rows", "columns", "number_of_frames", "photometric", "bits_stored", "high_bit",
                 "signed", "pixel_offset", "transfer_syntax"):
        assert getattr(mine, attr) == getattr(ref, attr), attr
    assert mine.windows() == ref.windows()
    assert mine.spacing() == ref.spacing()
    assert mine.native_frame_length() == ref.native_frame_length()
    if fast:
        for key, value in ref._opts.items():  # noqa: SLF001 - the options pydicom would decode with
            assert mine._opts[key] == value, key  # noqa: SLF001
    numbers = sorted({1, (ref.number_of_frames + 1) // 2, ref.number_of_frames})[:frames]
    for number in numbers:
        a, b = mine.frame(number), ref.frame(number)
        assert type(a) is type(b) and a.default_window == b.default_window
        windows = [None, Window(40, 400), Window(1000, 3000, "SIGMOID"), Window(-5, 1, "LINEAR"),
                   Window(100, 50, "LINEAR_EXACT")]
        for window in windows:
            assert np.array_equal(np.asarray(a.render(window)), np.asarray(b.render(window))), window
        assert np.array_equal(np.asarray(a.render(None, Viewport(64, 64))),
                              np.asarray(b.render(None, Viewport(64, 64))))
        for x, y in ((0, 0), (b.columns - 1, b.rows - 1), (b.columns // 2, b.rows // 3)):
            assert a.modality_value(x, y) == b.modality_value(x, y)


NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=rel)
def test_fast_path_matches_pydicom_on_the_samples(path: Path) -> None:
    ds = header(path)
    gray = str(ds.get("PhotometricInterpretation", "")).strip() in MONO
    simple = gray and ds.file_meta.TransferSyntaxUID in NATIVE_LE and int(ds.BitsAllocated) in (8, 16, 32) \
        and not any(k in ds for k in ("ModalityLUTSequence", "VOILUTSequence",
                                       "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"))
    raw = path.read_bytes()
    try:
        full_path(raw)
    except PacsError:
        with pytest.raises(PacsError):
            Instance.from_bytes(raw).frame(1)
        return
    # Every simple native greyscale sample takes the fast path; the rest are pydicom's.
    assert_same_rendering(raw, fast=simple)


def ct(**attributes: object) -> Dataset:
    """A 12-bit CT-like image: air, tissue, bone; HU = stored - 1024."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 4096, size=(40, 56), dtype=np.uint16)
    pixels[:5] = 0
    values: dict[str, object] = {"RescaleSlope": "1", "RescaleIntercept": "-1024", "WindowCenter": "40",
                                 "WindowWidth": "400", "PixelSpacing": [0.7, 0.7]}
    return gray_image(pixels, **{**values, **attributes})


def implicit(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    return ds


def with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Sequences before the Pixel Data (nested, empty, defined or undefined lengths)."""
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "123", "99X"
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.3", "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = sequence(inner)
    ds.ReferencedImageSequence = sequence(item, Dataset())
    ds.ProcedureCodeSequence = sequence()
    ds.add_new(0x00091010, "SQ", sequence(Dataset()))  # private
    ds.add_new(0x00091001, "LO", "private creator-less value")
    if undefined:
        for keyword in ("ReferencedImageSequence", "ProcedureCodeSequence"):
            ds[keyword].is_undefined_length = True
        for it in ds.ReferencedImageSequence:
            it.is_undefined_length_sequence_item = True
    return ds


def signed(values: np.ndarray, bits: int = 16, **attributes: object) -> Dataset:
    return gray_image(values.astype(np.int16), bits_stored=bits, **attributes)


GENERATED = {
    "ct": lambda: ct(),
    "ct implicit VR": lambda: implicit(ct()),
    "sequences": lambda: with_sequences(ct(), undefined=False),
    "sequences, undefined lengths": lambda: with_sequences(ct(), undefined=True),
    "sequences, implicit VR": lambda: implicit(with_sequences(ct(), undefined=True)),
    "signed with negatives": lambda: signed(np.arange(-1500, 1860).reshape(40, 84),
                                            RescaleIntercept="0", RescaleSlope="1"),
    "signed, all negative": lambda: signed(np.arange(-3360, 0).reshape(40, 84)),
    "signed, all positive": lambda: signed(np.arange(700, 4060).reshape(40, 84)),
    "signed 12-bit pattern": lambda: signed(
        (np.arange(-2048, 2048, dtype=np.int16).view(np.uint16) & 0x0FFF).view(np.int16).reshape(64, 64), 12),
    "garbage above high bit": lambda: gray_image(
        np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) | 0xF000),
    "high bit 15, bits stored 12": lambda: gray_image(
        (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) << 4) | 7, HighBit=15),
    "unsigned, minimum above 0": lambda: gray_image(np.arange(300, 300 + 64 * 64, dtype=np.uint16).reshape(64, 64)),
    "8-bit": lambda: gray_image((np.arange(4096) % 256).astype(np.uint8).reshape(64, 64), bits_stored=8),
    "8-bit signed": lambda: gray_image((np.arange(4096) % 256 - 128).astype(np.int8).reshape(64, 64),
                                       bits_stored=8),
    "16-bit full range": lambda: gray_image(np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64),
                                            bits_stored=16),
    "32-bit wide range": lambda: gray_image((np.arange(64 * 64, dtype=np.uint32) * 997).reshape(64, 64),
                                            bits_stored=32, RescaleSlope="0.001", RescaleIntercept="0"),
    "monochrome1": lambda: ct(PhotometricInterpretation="MONOCHROME1"),
    "inverse shape": lambda: ct(PresentationLUTShape="INVERSE"),
    "identity shape": lambda: ct(PresentationLUTShape="IDENTITY "),
    "several windows, sigmoid": lambda: ct(WindowCenter=["300", "40"], WindowWidth=["1500", "400"],
                                           VOILUTFunction="SIGMOID"),
    "unknown function": lambda: ct(VOILUTFunction="CURVED"),
    "no window": lambda: gray_image(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)),
    "zero slope": lambda: ct(RescaleSlope="0"),
    "fractional rescale": lambda: ct(RescaleSlope="0.684", RescaleIntercept="-3.5e2"),
    "imager pixel spacing": lambda: ct(ImagerPixelSpacing=[0.15, 0.2]),
    "multi-frame": lambda: gray_frames_ds(),
}
#: Generated files the fast path leaves to pydicom, and why.
GENERATED_FULL = {
    "modality LUT": lambda: ct(ModalityLUTSequence=sequence(lut_item(0, list(range(0, 8192, 2)), 16))),
    "VOI LUT": lambda: gray_image(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
                                  VOILUTSequence=sequence(lut_item(0, list(range(4096)), 12))),
    "window not a plain number": lambda: ct(WindowCenter="4_0"),
    "two-valued function": lambda: ct(VOILUTFunction=["LINEAR", "SIGMOID"]),
    "bits stored above bits allocated": lambda: ct(BitsStored=17),
    "explicit big endian": lambda: big_endian(ct()),
}


def gray_frames_ds() -> Dataset:
    frames = np.stack([np.arange(40 * 56, dtype=np.uint16).reshape(40, 56) * (k + 1) % 4096 for k in range(5)])
    ds = gray_image(frames.reshape(-1, 56), RescaleSlope="1", RescaleIntercept="-1024")
    ds.Rows, ds.NumberOfFrames = 40, "5"
    return ds


def big_endian(ds: Dataset) -> Dataset:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.2"
    ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    return ds


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_fast_path_matches_pydicom_on_generated_images(name: str) -> None:
    assert_same_rendering(part10(GENERATED[name]()), fast=True)


@pytest.mark.parametrize("name", sorted(GENERATED_FULL))
def test_fast_path_leaves_the_unusual_to_pydicom(name: str) -> None:
    raw = part10(GENERATED_FULL[name]())
    try:
        full_path(raw).frame(1)
    except PacsError as exc:  # the same refusal either way
        with pytest.raises(type(exc)):
            Instance.from_bytes(raw).frame(1)
        assert not isinstance(Instance.from_bytes_full(raw)._ds, dict)  # noqa: SLF001
        return
    assert_same_rendering(raw, fast=False)


def test_fast_path_on_the_generated_ct(ct_slice: Path) -> None:
    raw = ct_slice.read_bytes()
    assert_same_rendering(raw, fast=True)
    fr = Instance.from_bytes(raw).frame(1)
    assert fr.nbytes() >= len(raw)  # a view of the stored bytes keeps all of them


def test_fast_path_refuses_short_or_broken_files() -> None:
    raw = part10(ct())
    at = Instance.from_bytes(raw).pixel_offset
    # Pixel Data cut short: pydicom decides (and refuses), as before.
    short = raw[:at + 100]
    assert Instance.from_bytes_full(short) is not None
    with pytest.raises(NotRenderable):
        full_path(short).frame(1)
    with pytest.raises(NotRenderable):
        Instance.from_bytes(short).frame(1)
    # No DICM prefix, or a cut header: not the fast path's business.
    for broken in (raw[128:], raw[:200], raw[:at - 30]):
        with pytest.raises(PacsError):
            Instance.from_bytes(broken).frame(1)


def test_multiframe_native_frames_do_not_hold_the_whole_file() -> None:
    inst = Instance.from_bytes(part10(gray_frames_ds()))
    fr = inst.frame(3)
    assert fr.nbytes() < 40 * 56 * 2 * 2 + 128 * 1024 + 2048  # its own copy, not the 5 frames


@pytest.mark.parametrize("dtype", ["u1", "i1", "<u2", "<i2"])
def test_gray_frame_tables_by_bit_pattern_match_offsets(dtype: str) -> None:
    """A frame indexing its table by bit pattern (8/16-bit) renders as one holding offsets
    from its minimum (the layout for wider or masked values)."""
    from pacs.render import GrayFrame, _Rescale

    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(5)
    for lo, hi in ((info.min, info.max), (info.min, -1), (max(info.min, 3), min(info.max, 200)), (0, 0)):
        if hi < lo:
            continue
        values = rng.integers(lo, hi + 1, size=(16, 24)).astype(dtype)
        wide = values.astype(np.int64)
        mod = _Rescale(1.5, -7)
        a = GrayFrame(values, mod, None, None, False)
        b = GrayFrame(wide, mod, None, None, False)
        for window in (None, Window(0, 100), Window(float(lo), 3.0, "LINEAR_EXACT")):
            assert np.array_equal(np.asarray(a.render(window)), np.asarray(b.render(window)))
        assert np.array_equal(a.stored_values(), wide)
        assert a.minmax_window() == b.minmax_window()
        assert a.modality_value(5, 7) == b.modality_value(5, 7)
