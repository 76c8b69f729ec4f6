"""pacs.frames: big instances are read frame by frame with ranged reads, and decode exactly
what a whole read decodes.

Two claims, tested separately:

* Same pixels. Every sample file, every multi-frame reference file of pydicom and
  pydicom-data, and generated big files (native in three syntaxes; JPEG-LS and RLE with a
  Basic Offset Table, without one, with an Extended Offset Table, with several fragments
  per frame) decode to the same arrays frame by frame through ranged reads (threshold
  forced to 0) as through :meth:`Instance.from_bytes`, and to the generated ground truth.
* Far fewer bytes. A :class:`CountingStore` around a real FilesystemBlobStore (and once
  around the SeaweedFS S3 server) counts what is read: one frame of a 600-frame cine costs
  its header and that frame; playing every frame reads the blob once; the cache stays
  within budget.
"""

from __future__ import annotations

import dataclasses
import threading
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from pacs.errors import InvalidInstance
from pacs.frames import HEADER_READ, RANGED_THRESHOLD, FrameSource, open_ranged, read_header
from pacs.render import GrayFrame, Instance, NotRangeable, Window
from pacs.store.blobs import BlobStore, FilesystemBlobStore
from pacs.store.index import Index, InstanceRecord
from pacs.store.minio_blobs import MinioBlobStore
from tests.fixtures.render_refs import gray_frames, gray_image, part10, sequence

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_dicom"
SAMPLE_FILES = sorted(SAMPLES.rglob("*.dcm"))
#: Every multi-frame file shipped in pydicom's and pydicom-data's wheels (test extras).
REFERENCE_FILES = [
    "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "OBXXXX1A_rle_2frame.dcm",
    "SC_rgb_16bit_2frame.dcm", "SC_rgb_2frame.dcm", "SC_rgb_32bit_2frame.dcm",
    "SC_rgb_expb_16bit_2frame.dcm", "SC_rgb_expb_2frame.dcm", "SC_rgb_expb_32bit_2frame.dcm",
    "SC_rgb_rle_16bit_2frame.dcm", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle_32bit_2frame.dcm",
    "color3d_jpeg_baseline.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm",
    "liver.dcm", "liver_expb.dcm", "rtdose.dcm", "rtdose_expb.dcm", "rtdose_rle.dcm",
]
#: Files read whole by design, and why.
READ_WHOLE = {
    "image_dfl.dcm": "deflated: PS3.5 A.5 leaves no byte offsets",
    "liver.dcm": "Bits Allocated 1: frames do not start on byte boundaries",
    "liver_expb.dcm": "Bits Allocated 1: frames do not start on byte boundaries",
    "emri_small_jpeg_2k_lossless_too_short.dcm": "fragments end without a Sequence Delimiter",
}
#: No index is needed: the tests hand FrameSource their own records.
NO_INDEX = cast(Index, None)
MB = 1024 * 1024


class CountingStore:
    """A BlobStore that counts calls and bytes read from the store it wraps (thread-safe)."""

    def __init__(self, inner: BlobStore) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.bytes_read = 0
        self.ranges: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.bytes_read = 0
            self.ranges.clear()

    def _count(self, call: str, data: bytes, span: tuple[int, int] | None = None) -> bytes:
        with self._lock:
            self.calls[call] += 1
            self.bytes_read += len(data)
            if span is not None:
                self.ranges.append(span)
        return data

    def get(self, key: str) -> bytes:
        return self._count("get", self.inner.get(key))

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._count("get_range", self.inner.get_range(key, offset, length),
                           (offset, length))

    def size(self, key: str) -> int:
        with self._lock:
            self.calls["size"] += 1
        return self.inner.size(key)

    def __getattr__(self, name: str) -> Any:  # put, open, exists, delete, keys, ping
        return getattr(self.inner, name)


def record(key: str, size: int, frames: int = 1) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.826.0.1.3680043.8.498.{abs(hash(key)) % 10**12}",
        series_instance_uid="1.2.3.4", study_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7.3", transfer_syntax_uid="",
        blob_key=key, size=size, sha256="", received_at=datetime.now(UTC),
        rows=1, number_of_frames=frames,
    )


def stored(store: CountingStore, key: str, raw: bytes) -> InstanceRecord:
    store.put(key, raw)
    store.reset()
    return record(key, len(raw))


@pytest.fixture
def fs_store(tmp_path: Path) -> CountingStore:
    return CountingStore(FilesystemBlobStore(tmp_path / "blobs", fsync=False))


def assert_same_frames(whole: Instance, ranged: Instance, truth: np.ndarray | None = None) -> None:
    """Frame by frame: the decoded arrays (dtype, shape, values, photometric) are identical."""
    assert ranged.number_of_frames == whole.number_of_frames
    for index in range(whole.number_of_frames):
        outcomes: list[tuple[Any, Any]] = []
        for inst in (whole, ranged):
            try:
                outcomes.append(inst._decode(index))  # the raw decode: what "bit-identical" means
            except Exception as exc:  # noqa: BLE001 - a broken frame must fail both ways
                outcomes.append((type(exc), None))
        (a, pa), (b, pb) = outcomes
        if not isinstance(a, np.ndarray):
            assert a == b, f"frame {index + 1}: {a} whole, {b} ranged"
            continue
        assert isinstance(b, np.ndarray), f"frame {index + 1} fails only when ranged"
        assert a.dtype == b.dtype and a.shape == b.shape and pa == pb
        assert np.array_equal(a, b), f"frame {index + 1} differs"
        if truth is not None:
            assert np.array_equal(a, truth[index]), f"frame {index + 1} is not the ground truth"


# --------------------------------------------------------------------------- same pixels


def _files() -> Iterator[Any]:
    for path in SAMPLE_FILES:
        yield pytest.param(path, id=path.relative_to(SAMPLES).as_posix())
    for name in REFERENCE_FILES:
        yield pytest.param(Path(str(get_testdata_file(name))), id=f"pydicom/{name}")


@pytest.mark.parametrize("path", list(_files()))
def test_ranged_decode_is_identical_to_whole_read(path: Path, fs_store: CountingStore) -> None:
    raw = path.read_bytes()
    whole = Instance.from_bytes(raw)
    rec = stored(fs_store, "k", raw)
    # The first read ends exactly after the Pixel Data header, so even tiny files are ranged.
    src = FrameSource(NO_INDEX, fs_store, 256 * MB, ranged_threshold=0,
                      header_read=max(whole.pixel_offset, 64))
    ranged = src.instance(rec)
    if path.name in READ_WHOLE:
        assert not ranged.by_frame and fs_store.bytes_read >= len(raw), READ_WHOLE[path.name]
    else:
        assert ranged.by_frame and fs_store.calls["get"] == 0
    assert_same_frames(whole, ranged)
    last = whole.number_of_frames
    expected = np.asarray(whole.frame(last).render())  # every file here renders (no escape hatch)
    assert np.array_equal(np.asarray(src.frame(rec, last).render()), expected)


@dataclass(frozen=True)
class Generated:
    raw: bytes
    truth: np.ndarray


def _truth(frames: int, rows: int, columns: int, seed: int = 7) -> np.ndarray:
    """Distinct 12-bit frames: a ramp that moves with the frame number, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    base = (xx * 3 + yy * 5)[None] + 37 * np.arange(frames)[:, None, None]
    return ((base % 4000) + rng.integers(0, 64, (frames, rows, columns))).astype(np.uint16)


def _reencapsulate(ds: Dataset, **how: Any) -> Dataset:
    """The same compressed frames, fragmented and tabled as ``how`` says (PS3.5 A.4)."""
    frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))
    if how.pop("extended", False):
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(frames))
    else:
        ds.PixelData = encapsulate(frames, **how)
    return ds


@pytest.fixture(scope="session")
def generated() -> dict[str, Generated]:
    """Big multi-frame files (a few tens of MB native, a few MB compressed)."""
    native = _truth(200, 256, 256)
    small = native[:60]
    out: dict[str, Generated] = {}
    for name, syntax in (("native-explicit-le", ExplicitVRLittleEndian),
                         ("native-implicit-le", ImplicitVRLittleEndian),
                         ("native-explicit-be", ExplicitVRBigEndian)):
        out[name] = Generated(part10(gray_frames(native, syntax)), native)
    cases: dict[str, tuple[Any, dict[str, Any]]] = {
        "jpeg-ls-bot": (JPEGLSLossless, {}),
        "jpeg-ls-extended-offsets": (JPEGLSLossless, {"extended": True}),
        "jpeg-ls-6-fragments-no-bot": (JPEGLSLossless, {"fragments_per_frame": 6,
                                                        "has_bot": False}),
        "jpeg-ls-2-fragments-bot": (JPEGLSLossless, {"fragments_per_frame": 2}),
        "rle-no-bot": (RLELossless, {"has_bot": False}),
    }
    for name, (syntax, how) in cases.items():
        ds = gray_frames(small, str(syntax))
        out[name] = Generated(part10(_reencapsulate(ds, **how) if how else ds), small)
    return out


#: What locating the frames may read beyond the first header read (HEADER_READ bytes, which
#: holds the header, the offset tables and the first fragments): (bytes, reads) at most.
LOCATE_COST = {
    # Native: frame offsets are arithmetic (PS3.5 8.1.1).
    "native-explicit-le": (0, 0), "native-implicit-le": (0, 0), "native-explicit-be": (0, 0),
    # Extended Offset Table: in the header.
    "jpeg-ls-extended-offsets": (0, 0),
    # Basic Offset Table: only the last frame's end is walked to the Sequence Delimiter:
    # its first item header, then 18 bytes (tail + next header) per item.
    "jpeg-ls-bot": (8 + 18, 2), "jpeg-ls-2-fragments-bot": (8 + 2 * 18, 3),
    # No table, ~70 KB fragments: 18 bytes per fragment, the fragment data is skipped.
    "rle-no-bot": (60 * 18, 60),
    # No table, ~10 KB fragments: 64 KB chunks, at least four headers per read.
    "jpeg-ls-6-fragments-no-bot": (10**9, 360 // 4),
}


@pytest.mark.parametrize("name", sorted(LOCATE_COST))
def test_generated_files_decode_identically_by_ranges(
    name: str, generated: dict[str, Generated], fs_store: CountingStore
) -> None:
    case = generated[name]
    whole = Instance.from_bytes(case.raw)
    assert (whole.extended_offsets() is not None) == ("extended" in name)
    rec = stored(fs_store, "k", case.raw)
    ranged = FrameSource(NO_INDEX, fs_store, 256 * MB, ranged_threshold=0).instance(rec)
    assert ranged.by_frame and fs_store.calls["get"] == 0
    max_bytes, max_reads = LOCATE_COST[name]
    assert fs_store.ranges[0] == (0, HEADER_READ)
    assert fs_store.bytes_read - HEADER_READ <= max_bytes
    assert fs_store.calls["get_range"] - 1 <= max_reads
    assert_same_frames(whole, ranged, case.truth)


@pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")  # a cut character set
def test_header_parse_never_guesses_from_a_cut_prefix() -> None:
    """Every prefix shorter than the Pixel Data header says "read more"; from there on the
    parse is the whole file's."""
    for name in ("emri_small.dcm", "emri_small_jpeg_ls_lossless.dcm", "MR_small_implicit.dcm",
                 "MR_small_expb.dcm"):
        raw = next(SAMPLES.rglob(name)).read_bytes()
        whole = Instance.from_bytes(raw)
        for cut in [*range(0, whole.pixel_offset, 7), whole.pixel_offset - 1]:
            assert Instance.from_header(raw[:cut]) is None, (name, cut)
        for cut in (whole.pixel_offset, whole.pixel_offset + 100):
            inst = Instance.from_header(raw[:cut])
            assert inst is not None and inst.pixel_offset == whole.pixel_offset
            assert inst.number_of_frames == whole.number_of_frames and not inst.by_frame


def test_deflated_header_is_not_rangeable() -> None:
    raw = (SAMPLES / "OT" / "image_dfl.dcm").read_bytes()
    with pytest.raises(NotRangeable):
        Instance.from_header(raw)


def test_a_bad_basic_offset_table_falls_back_to_a_whole_read(
    generated: dict[str, Generated], fs_store: CountingStore
) -> None:
    raw = bytearray(generated["jpeg-ls-bot"].raw)
    whole = Instance.from_bytes(bytes(raw))
    bot = whole.pixel_offset + 8  # PS3.5 A.4: BOT item value, 4 bytes per frame
    raw[bot + 4:bot + 8], raw[bot + 8:bot + 12] = raw[bot + 8:bot + 12], raw[bot + 4:bot + 8]
    with pytest.raises(NotRangeable, match="not increasing"):
        open_ranged(fs_store, *_put(fs_store, bytes(raw)))
    rec = stored(fs_store, "bad", bytes(raw))
    inst = FrameSource(NO_INDEX, fs_store, 256 * MB, ranged_threshold=0).instance(rec)
    assert not inst.by_frame and fs_store.calls["get"] == 1


@pytest.mark.parametrize(("rows", "columns", "by_frame"), [(4, 5, True), (5, 3, False)])
def test_big_endian_8_bit_ow_frames(
    rows: int, columns: int, by_frame: bool, fs_store: CountingStore
) -> None:
    """Explicit VR Big Endian 8-bit data in OW words is swapped in byte pairs: an even-length
    frame is read alone, an odd-length one shares a word with its neighbour (read whole)."""
    truth = (np.arange(3 * rows * columns).reshape(3, rows, columns) * 7 % 256).astype(np.uint8)
    ds = gray_image(truth[0], bits_stored=8)
    ds.NumberOfFrames = 3
    flat = truth.tobytes() + b"\0" * (truth.size % 2)
    ds.PixelData = np.frombuffer(flat, ">u2").astype("<u2").tobytes()  # written as OW words
    ds["PixelData"].VR = "OW"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    raw = part10(ds)
    whole = Instance.from_bytes(raw)
    rec = stored(fs_store, "be", raw)
    inst = FrameSource(NO_INDEX, fs_store, 256 * MB, ranged_threshold=0,
                       header_read=whole.pixel_offset).instance(rec)
    assert inst.by_frame == by_frame
    assert_same_frames(whole, inst, truth)


def _put(store: CountingStore, raw: bytes, key: str = "direct") -> tuple[str, int]:
    store.put(key, raw)
    return key, len(raw)


def test_a_big_blob_that_is_not_dicom_is_invalid_as_before(fs_store: CountingStore) -> None:
    raw = np.random.default_rng(3).integers(0, 256, 300_000).astype(np.uint8).tobytes()
    rec = stored(fs_store, "junk", raw)
    with pytest.raises(InvalidInstance):
        FrameSource(NO_INDEX, fs_store, 256 * MB, ranged_threshold=0).instance(rec)
    with pytest.raises(InvalidInstance):
        Instance.from_bytes(raw)


# --------------------------------------------------------------------------- far fewer bytes

CINE_FRAMES, CINE_ROWS, CINE_COLUMNS = 600, 128, 128
FRAME_BYTES = CINE_ROWS * CINE_COLUMNS * 2


def _intercept(index: int) -> float:
    return -1000.0 + index


@pytest.fixture(scope="session")
def cine() -> Generated:
    """A 600-frame native cine (19.7 MB, above RANGED_THRESHOLD) whose per-frame functional
    groups (PS3.3 C.7.6.16) make the header larger than the first header read."""
    truth = _truth(CINE_FRAMES, CINE_ROWS, CINE_COLUMNS, seed=11)
    ds = gray_frames(truth)
    items = []
    for index in range(CINE_FRAMES):
        pvt = Dataset()
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1, _intercept(index), "US"
        position = Dataset()
        position.ImagePositionPatient = [0.0, 0.0, 1.25 * index]
        content = Dataset()
        content.InStackPositionNumber = index + 1
        item = Dataset()
        item.PixelValueTransformationSequence = sequence(pvt)
        item.PlanePositionSequence = sequence(position)
        item.FrameContentSequence = sequence(content)
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = sequence(*items)
    return Generated(part10(ds), truth)


def _first_read(pixel_offset: int, first: int = HEADER_READ) -> int:
    """Bytes the header costs: the first read doubled until the Pixel Data header is in."""
    size = first
    while size < pixel_offset:
        size *= 2
    return size


def test_one_frame_of_a_big_cine_reads_the_header_and_that_frame(
    cine: Generated, fs_store: CountingStore
) -> None:
    rec = stored(fs_store, "cine", cine.raw)
    assert rec.size >= RANGED_THRESHOLD  # the default configuration takes the ranged path
    src = FrameSource(NO_INDEX, fs_store, 256 * MB)
    fr = src.frame(rec, 500)
    header = src.instance(rec).pixel_offset
    assert header > HEADER_READ  # the header read had to grow
    assert fs_store.calls["get"] == 0
    assert fs_store.bytes_read == _first_read(header) + FRAME_BYTES
    assert fs_store.bytes_read < len(cine.raw) / 50
    assert fs_store.ranges[-1] == (header + 499 * FRAME_BYTES, FRAME_BYTES)
    assert isinstance(fr, GrayFrame)
    # The right frame, with its own per-frame rescale from the header.
    assert fr.modality_value(5, 9) == float(cine.truth[499, 9, 5]) + _intercept(499)
    assert np.array_equal(src.instance(rec)._decode(499)[0], cine.truth[499])


def test_playing_every_frame_reads_the_blob_once_within_the_cache_budget(
    cine: Generated, fs_store: CountingStore
) -> None:
    rec = stored(fs_store, "cine", cine.raw)
    budget = 8 * MB  # less than half the blob: frames are evicted as the loop plays
    src = FrameSource(NO_INDEX, fs_store, budget)
    src.instance(rec)
    assert 0 < src.cache.bytes < 1 * MB  # the instance entry: header and frame map only
    for number in range(1, CINE_FRAMES + 1):
        src.frame(rec, number)
        assert src.cache.bytes <= budget
    header = src.instance(rec).pixel_offset
    assert fs_store.calls["get"] == 0
    assert fs_store.bytes_read == _first_read(header) + CINE_FRAMES * FRAME_BYTES
    assert len(cine.raw) - header <= fs_store.bytes_read <= len(cine.raw) + HEADER_READ
    # A second pass re-reads evicted frames, never the header (the instance stays cached).
    before = fs_store.calls["get_range"]
    src.frame(rec, 1)
    assert fs_store.calls["get_range"] == before + 1


def test_whole_reads_of_a_big_cine_were_the_problem(
    cine: Generated, fs_store: CountingStore
) -> None:
    """What the ranged path replaces: above the cache budget, each frame re-reads the blob."""
    rec = stored(fs_store, "cine", cine.raw)
    src = FrameSource(NO_INDEX, fs_store, 8 * MB, ranged_threshold=1 << 62)
    src.frame(rec, 500)
    src.frame(rec, 501)
    assert fs_store.calls["get"] == 2 and fs_store.bytes_read == 2 * len(cine.raw)


def test_concurrent_requests_for_a_cold_frame_read_it_once(
    cine: Generated, fs_store: CountingStore
) -> None:
    rec = stored(fs_store, "cine", cine.raw)
    src = FrameSource(NO_INDEX, fs_store, 256 * MB)
    start = threading.Barrier(8)
    got: list[object] = []

    def ask() -> None:
        start.wait()
        got.append(src.frame(rec, 300))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 8 and all(fr is got[0] for fr in got)
    header = src.instance(rec).pixel_offset
    frame_reads = [r for r in fs_store.ranges if r == (header + 299 * FRAME_BYTES, FRAME_BYTES)]
    assert len(frame_reads) == 1
    assert fs_store.bytes_read == _first_read(header) + FRAME_BYTES


def test_ranged_reads_end_to_end_on_s3(
    cine: Generated, generated: dict[str, Generated], minio_store: MinioBlobStore
) -> None:
    """The same frame-500 read against the real S3 server (SeaweedFS), plus an item walk."""
    store = CountingStore(minio_store)
    rec = stored(store, "cine/blob.dcm", cine.raw)
    src = FrameSource(NO_INDEX, store, 256 * MB)
    fr = src.frame(rec, 500)
    header = src.instance(rec).pixel_offset
    assert store.calls["get"] == 0
    assert store.bytes_read == _first_read(header) + FRAME_BYTES
    assert fr.modality_value(5, 9) == float(cine.truth[499, 9, 5]) + _intercept(499)
    case = generated["jpeg-ls-6-fragments-no-bot"]
    rec = stored(store, "walk/blob.dcm", case.raw)
    ranged = FrameSource(NO_INDEX, store, 256 * MB, ranged_threshold=0).instance(rec)
    assert ranged.by_frame and store.calls["get"] == 0
    assert_same_frames(Instance.from_bytes(case.raw), ranged, case.truth)


# --------------------------------------------------------------------------- rendering ahead


class SeriesIndex:
    """The two index look-ups FrameSource makes: one instance, a series in reading order."""

    def __init__(self, records: list[InstanceRecord]) -> None:
        self.records = records
        self.series_queries = 0

    def instances_of(self, study: str, series: str | None = None) -> list[InstanceRecord]:
        self.series_queries += 1
        return [r for r in self.records if r.study_instance_uid == study
                and (series is None or r.series_instance_uid == series)]

    def get_instance(self, sop: str) -> InstanceRecord | None:
        return next((r for r in self.records if r.sop_instance_uid == sop), None)


def slice_record(key: str, size: int, number: int, frames: int = 1) -> InstanceRecord:
    return InstanceRecord(
        sop_instance_uid=f"1.2.3.4.5.{number}", series_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid=ExplicitVRLittleEndian, blob_key=key, size=size, sha256="",
        received_at=datetime.now(UTC), rows=48, number_of_frames=frames,
    )


@pytest.fixture
def series(fs_store: CountingStore) -> list[InstanceRecord]:
    """12 distinct 48x64 CT-like slices, stored, in reading order."""
    out = []
    for n in range(12):
        pixels = ((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * (n + 3)) % 4096)
        raw = part10(gray_image(pixels, RescaleSlope="1", RescaleIntercept="-1024",
                                WindowCenter="40", WindowWidth="400"))
        fs_store.put(f"s{n}", raw)
        out.append(slice_record(f"s{n}", len(raw), n))
    return out


def settle(src: FrameSource, timeout: float = 20.0) -> None:
    """Wait until the render-ahead thread has nothing left to do."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with src._cv:  # noqa: SLF001
            if not src.working and src._job is None and not src._series_wanted:  # noqa: SLF001
                return
        time.sleep(0.005)
    raise AssertionError("render-ahead thread did not settle")


def direct(fs_store: CountingStore, rec: InstanceRecord, number: int = 1, window: Window | None = None,
           kind: str = "image/jpeg") -> bytes:
    return FrameSource(NO_INDEX, fs_store, 256 * MB, ahead=0).encoded(rec, number, window, None, kind, None)


@pytest.mark.parametrize("process", [True, False], ids=["child process", "thread"])
def test_scrolling_renders_the_next_slices_ahead(series: list[InstanceRecord], fs_store: CountingStore,
                                                 process: bool) -> None:
    index = SeriesIndex(series)
    src = FrameSource(cast(Index, index), fs_store, 256 * MB, ahead_process=process)
    src.encoded(series[0], 1, None, None, "image/jpeg", None)  # asks for the series list
    settle(src)
    assert index.series_queries == 1 and src.ahead_renders == 0
    for rec in series[1:4]:  # two steps of one slice: the third request starts the worker
        src.encoded(rec, 1, None, None, "image/jpeg", None)
    settle(src)
    assert src.ahead_renders == 8 and src.ahead_hits == 0
    # Every later slice comes from the ahead renders and is byte for byte the direct render.
    for rec in series[4:]:
        assert src.encoded(rec, 1, None, None, "image/jpeg", None) == direct(fs_store, rec)
        settle(src)
    assert src.ahead_hits == 8 and src.ahead_renders == 8
    # The series list also answered the record look-ups: no per-instance query.
    assert src.record("1.2.3", "1.2.3.4", series[5].sop_instance_uid) == series[5]


def test_scrolling_back_renders_ahead_backwards(series: list[InstanceRecord], fs_store: CountingStore) -> None:
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    src.encoded(series[11], 1, None, None, "image/png", None)
    settle(src)
    for rec in (series[10], series[9], series[8]):
        src.encoded(rec, 1, None, None, "image/png", None)
    settle(src)
    assert src.ahead_renders == 8  # slices 7..0
    assert src.encoded(series[7], 1, None, None, "image/png", None) == direct(fs_store, series[7], kind="image/png")
    assert src.ahead_hits == 1


@pytest.mark.parametrize("order", [[0, 4, 8, 1, 5, 9], [0, 1, 4, 5, 8, 9], [0, 2, 4, 6], [0, 1, 0, 1]])
def test_no_rendering_ahead_without_a_scroll(order: list[int], series: list[InstanceRecord],
                                             fs_store: CountingStore) -> None:
    """Interleaved requests (several connections sharing a series) or jumps start nothing."""
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    src.encoded(series[11], 1, None, None, "image/jpeg", None)
    settle(src)
    for n in order:
        src.encoded(series[n], 1, None, None, "image/jpeg", None)
        settle(src)
    assert src.ahead_renders == 0


def test_rendering_ahead_needs_the_same_parameters(series: list[InstanceRecord], fs_store: CountingStore) -> None:
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    src.encoded(series[0], 1, None, None, "image/jpeg", None)
    settle(src)
    for n, window in ((1, Window(40, 400)), (2, Window(41, 400)), (3, Window(42, 400))):
        src.encoded(series[n], 1, window, None, "image/jpeg", None)
    settle(src)
    assert src.ahead_renders == 0
    # The same window for three slices in a row (3, 4, 5): the next ones get that window.
    for n in (4, 5):
        src.encoded(series[n], 1, Window(42, 400), None, "image/jpeg", None)
    settle(src)
    assert src.ahead_renders == 6  # slices 6..11
    assert src.encoded(series[6], 1, Window(42, 400), None, "image/jpeg", None) == \
        direct(fs_store, series[6], window=Window(42, 400))
    assert src.ahead_hits == 1
    assert src.encoded(series[7], 1, None, None, "image/jpeg", None) == direct(fs_store, series[7])
    assert src.ahead_hits == 1  # rendered with another window: not this request's image


def test_rendering_ahead_waits_while_other_requests_run(series: list[InstanceRecord],
                                                         fs_store: CountingStore) -> None:
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    src.encoded(series[0], 1, None, None, "image/jpeg", None)
    settle(src)
    src._busy = 2  # noqa: SLF001 - two other requests in progress in this process
    for rec in series[1:4]:
        src.encoded(rec, 1, None, None, "image/jpeg", None)
    settle(src)
    assert src.ahead_renders == 0


def test_no_rendering_ahead_without_a_cache(series: list[InstanceRecord], fs_store: CountingStore) -> None:
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 0)
    for rec in series[:5]:
        assert src.encoded(rec, 1, None, None, "image/jpeg", None) == direct(fs_store, rec)
    assert src.ahead == 0 and src.ahead_renders == 0 and src.cache.bytes == 0


def test_a_replaced_instance_is_never_served_from_an_old_render(series: list[InstanceRecord],
                                                                fs_store: CountingStore) -> None:
    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    for rec in series[:4]:
        src.encoded(rec, 1, None, None, "image/jpeg", None)
        settle(src)
    assert src.ahead_renders == 8
    # Slice 4 replaced (the "overwrite" duplicate policy): a new blob, other pixels.
    raw = part10(gray_image(np.full((48, 64), 1000, np.uint16), WindowCenter="40", WindowWidth="400"))
    fs_store.put("s4-new", raw)
    replaced = dataclasses.replace(series[4], blob_key="s4-new", size=len(raw))
    assert src.encoded(replaced, 1, None, None, "image/jpeg", None) == direct(fs_store, replaced)
    assert direct(fs_store, replaced) != direct(fs_store, series[4])
    assert src.ahead_hits == 0


def test_a_cine_renders_the_next_frames_ahead(cine: Generated, fs_store: CountingStore) -> None:
    rec = stored(fs_store, "cine", cine.raw)
    rec = dataclasses.replace(rec, number_of_frames=CINE_FRAMES)
    src = FrameSource(NO_INDEX, fs_store, 64 * MB)
    for number in (1, 2, 3):
        src.encoded(rec, number, None, None, "image/jpeg", None)
    settle(src)
    assert src.ahead_renders == 8
    reference = FrameSource(NO_INDEX, fs_store, 64 * MB, ahead=0)
    for number in (4, 5):
        assert src.encoded(rec, number, None, None, "image/jpeg", None) == \
            reference.encoded(rec, number, None, None, "image/jpeg", None)
    assert src.ahead_hits == 2


def test_a_single_frame_is_cached_once(series: list[InstanceRecord], fs_store: CountingStore) -> None:
    """A native slice's decoded frame is a view of its stored bytes; the instance is not
    cached beside it (the same bytes would count twice)."""
    src = FrameSource(NO_INDEX, fs_store, 256 * MB)
    fr = src.frame(series[0], 1)
    assert src.cache.bytes == fr.nbytes() and len(src.cache) == 1
    assert series[0].size <= fr.nbytes() < series[0].size + 64 * 1024


def test_the_child_renderer_reads_a_filesystem_store_itself(series: list[InstanceRecord],
                                                           fs_store: CountingStore) -> None:
    plain = fs_store.inner
    src = FrameSource(cast(Index, SeriesIndex(series)), plain, 256 * MB)
    for rec in series[:4]:
        src.encoded(rec, 1, None, None, "image/jpeg", None)
        settle(src)
    assert src._renderer is not None and src._renderer.read is not None  # noqa: SLF001
    fs_store.reset()
    for rec in series[4:]:
        assert src.encoded(rec, 1, None, None, "image/jpeg", None) == direct(fs_store, rec)
    assert src.ahead_hits == 8
    src.close()


def test_the_child_renderer_keeps_no_inherited_descriptor() -> None:
    """A client connection inherited by the child would stay open after the server closes it."""
    import os
    import socket

    from pacs.frames import _Renderer

    ours, clients = socket.socketpair()
    renderer = _Renderer()
    try:
        ours.close()  # the server closes the connection: the client must see it closed
        clients.settimeout(10)
        assert clients.recv(1) == b""
        assert renderer.submit(part10(gray_image(np.zeros((4, 4), np.uint16))), 1,
                               (None, None, "image/png", None))
        assert renderer.result() is not None
    finally:
        clients.close()
        with renderer._lock:  # noqa: SLF001
            renderer.close()
    assert not os.path.exists(f"/proc/{renderer.pid}") or _gone(renderer.pid)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_dead_child_renderer_is_replaced(series: list[InstanceRecord], fs_store: CountingStore) -> None:
    import os
    import signal

    src = FrameSource(cast(Index, SeriesIndex(series)), fs_store, 256 * MB)
    for rec in series[:4]:
        src.encoded(rec, 1, None, None, "image/jpeg", None)
        settle(src)
    assert src.ahead_renders == 8
    first = src._renderer  # noqa: SLF001
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    assert _gone(first.pid)
    # Requests still answer (rendering themselves), and a later scroll gets a new child.
    src.ahead_renders = 0
    for rec in series[11:6:-1]:
        assert src.encoded(rec, 1, None, None, "image/jpeg", None) == direct(fs_store, rec)
        settle(src)
    assert src._renderer is not first and src.ahead_renders > 0  # noqa: SLF001
    src.close()


def test_a_module_half_imported_by_another_thread_at_fork_imports_afresh_in_the_child(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The child is forked while request threads run; one of them may be importing a module
    (Pillow loads its plugins on the first save). That module's lock is held by a thread the
    child does not have: without care, the child's own import of it waits for ever."""
    import importlib
    import sys
    import threading

    import pacs.frames as frames_mod

    name, flag = "slow_import_for_fork_test", tmp_path / "go"
    (tmp_path / f"{name}.py").write_text(
        f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.01)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(frames_mod, "RESULT_TIMEOUT", 2.0)
    importer = threading.Thread(target=importlib.import_module, args=(name,), daemon=True)
    importer.start()
    deadline = time.monotonic() + 10
    while name not in sys.modules and time.monotonic() < deadline:  # now half-imported
        time.sleep(0.005)
    assert name in sys.modules and sys.modules[name].__spec__._initializing  # type: ignore[union-attr]
    data = part10(gray_image(np.arange(16, dtype=np.uint16).reshape(4, 4)))
    renderer = frames_mod._Renderer(  # noqa: SLF001
        lambda key: data if importlib.import_module(name).VALUE == 42 else b"")
    try:
        assert renderer.submit("some/blob", 1, (None, None, "image/png", None))
        flag.touch()  # the child imports the module afresh and goes on
        assert renderer.result() is not None and renderer.alive
    finally:
        importer.join(10)
        with renderer._lock:  # noqa: SLF001
            renderer.close()


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_a_slow_but_working_child_is_waited_for_up_to_result_max(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a loaded machine an image may take longer than RESULT_TIMEOUT: a child whose CPU
    clock moves is working, not stuck, and its answer is taken; past RESULT_MAX it is killed."""
    import pacs.frames as frames_mod

    data = part10(gray_image(np.arange(16, dtype=np.uint16).reshape(4, 4)))
    monkeypatch.setattr(frames_mod, "RESULT_TIMEOUT", 0.2)
    renderer = frames_mod._Renderer(lambda key: _spin(1.5) or data)  # noqa: SLF001
    try:
        assert renderer.submit("some/blob", 1, (None, None, "image/png", None))
        assert renderer.result() is not None and renderer.alive
    finally:
        with renderer._lock:  # noqa: SLF001
            renderer.close()

    monkeypatch.setattr(frames_mod, "RESULT_MAX", 1.0)
    renderer = frames_mod._Renderer(lambda key: _spin(120) or data)  # noqa: SLF001
    assert renderer.submit("some/blob", 1, (None, None, "image/png", None))
    t0 = time.monotonic()
    assert renderer.result() is None and not renderer.alive
    assert time.monotonic() - t0 < 60
    assert _gone(renderer.pid)


def test_a_stuck_render_ahead_child_is_killed_and_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child that never answers (here: its blob read hangs) must not hold the render-ahead
    thread, and the requests waiting on it, for ever: it is killed after RESULT_TIMEOUT."""
    import pacs.frames as frames_mod

    monkeypatch.setattr(frames_mod, "RESULT_TIMEOUT", 0.5)
    renderer = frames_mod._Renderer(lambda key: time.sleep(120))  # noqa: SLF001
    assert renderer.submit("some/blob", 1, (None, None, "image/jpeg", None))
    t0 = time.monotonic()
    assert renderer.result() is None
    assert time.monotonic() - t0 < 60  # not the child's 120 s
    assert not renderer.alive and not renderer.submit("some/blob", 1, (None, None, "image/jpeg", None))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # reaped by close(): gone from the process table
        try:
            os.kill(renderer.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the stuck child is still running")


# --------------------------------------------------------------------------- headers by ranges


def _elements(ds: Dataset) -> list[tuple[Any, str, str]]:
    meta = list(getattr(ds, "file_meta", None) or [])
    return [(e.tag, e.VR, repr(e.value)) for e in [*meta, *ds]]


@pytest.mark.parametrize("path", list(_files()))
@pytest.mark.parametrize("first", [256, HEADER_READ])
def test_header_by_ranges_is_the_header_pydicom_reads(path: Path, first: int,
                                                      fs_store: CountingStore) -> None:
    """Every element before Pixel Data, as pydicom reads it from the whole file, whether the
    first read holds the header (64 KiB) or has to grow (256 bytes)."""
    from pydicom import dcmread

    raw = path.read_bytes()
    rec = stored(fs_store, "h", raw)
    header = read_header(fs_store, rec.blob_key, rec.size, first)
    assert _elements(header) == _elements(dcmread(path, stop_before_pixels=True))
    assert "PixelData" not in header
    assert fs_store.calls["get"] == 0 or len(raw) <= first


def test_the_header_of_a_big_cine_costs_its_first_bytes_only(cine: Generated,
                                                             fs_store: CountingStore) -> None:
    """The tag browser and the overlays of a 19.7 MB cine: the header, not the blob."""
    rec = stored(fs_store, "cine", cine.raw)
    src = FrameSource(NO_INDEX, fs_store, 256 * MB)
    header = src.header(rec)
    assert len(header.PerFrameFunctionalGroupsSequence) == CINE_FRAMES
    pixel_offset = Instance.from_bytes(cine.raw).pixel_offset
    assert fs_store.calls["get"] == 0
    assert fs_store.bytes_read == _first_read(pixel_offset) < len(cine.raw) / 50
    fs_store.reset()
    assert src.header(rec) is header and fs_store.bytes_read == 0  # kept in the cache


def test_a_header_without_pixel_data_is_read_to_its_end(fs_store: CountingStore) -> None:
    """A report has no Pixel Data for pydicom to stop at: the whole (small) blob is the header."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    ds.PatientName = "Trần^Thị Bình"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.TextValue = "x" * 5000
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    from io import BytesIO

    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    rec = stored(fs_store, "sr", out.getvalue())
    header = read_header(fs_store, rec.blob_key, rec.size, 512)
    assert header.TextValue == "x" * 5000 and str(header.PatientName) == "Trần^Thị Bình"


@pytest.mark.parametrize("raw, size", [
    (np.random.default_rng(5).integers(0, 256, 300_000).astype(np.uint8).tobytes(), None),
    (b"", 4096),  # the index says 4 KiB, the blob is empty
])
def test_an_unreadable_header_is_invalid(fs_store: CountingStore, raw: bytes, size: int | None) -> None:
    rec = stored(fs_store, "bad", raw)
    with pytest.raises(InvalidInstance):
        read_header(fs_store, rec.blob_key, size or rec.size, 1024)
