"""Stored instances to decoded frames, through a memory-bounded cache (no Flask here).

Why a cache: a radiologist drags the window dozens of times a second over the same
slice, and scrolls back and forth through a series. Re-reading the blob and
re-decoding JPEG 2000 for each of those would dominate the response time, so parsed
instances and decoded frames are kept in an LRU bounded by bytes, per process. It is
a throwaway node-local cache: the key is the blob key (which changes if an instance is
ever replaced), so a stale entry is impossible, and a miss costs a read, never data.

Why ranged reads: a cine loop or an enhanced CT/MR can be hundreds of MB. Reading all of
it to show one frame, and again for the next frame once it no longer fits the cache,
makes playback impossible. So an instance of :data:`RANGED_THRESHOLD` bytes or more is
opened by its header only (ranged reads grown until the Pixel Data element header), its
frames located (PS3.5 8.1.1 native frames, A.4 encapsulated fragments) without reading
them, and each frame read with one ranged read when it is decoded. The cache then holds
the header and the frame map (kilobytes) plus decoded frames. Smaller instances are read
whole: one read beats several round trips for a 0.5 MB CT slice.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pacs.errors import NotFound
from pacs.render import Frame, Instance, NotRangeable, NotRenderable
from pacs.store.blobs import BlobStore
from pacs.store.index import Index, InstanceRecord

log = logging.getLogger(__name__)

#: Seconds an index row is reused without asking the database again.
RECORD_TTL = 10.0
#: Blobs of at least this many bytes are read by ranges, frame by frame.
RANGED_THRESHOLD = 16 * 1024 * 1024
#: First read of a ranged instance's header; doubled until the Pixel Data header is in it.
HEADER_READ = 64 * 1024
#: A header still not parsed at this size is not worth ranging: the blob is read whole.
HEADER_LIMIT = 64 * 1024 * 1024
#: Read size while walking fragment item headers (PS3.5 A.4) of small fragments.
WALK_CHUNK = 64 * 1024

_ITEM = 0xFFFEE000  # PS3.5 7.5: Item tag
_SEQ_DELIMITER = 0xFFFEE0DD  # PS3.5 7.5: Sequence Delimitation Item tag
_UNDEFINED = 0xFFFFFFFF
#: pydicom (encaps.get_frame) ends a frame at a fragment with the JPEG EOI / J2K EOC marker
#: in its last 10 bytes when fragments outnumber frames and no offset table says otherwise.
_EOI = b"\xff\xd9"
_TAIL = 10


class LRUCache:
    """A thread-safe LRU cache bounded by the total ``size`` of its entries (bytes)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Any, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: Any) -> Any | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Any, value: Any, size: int) -> None:
        """Insert ``value``; evict least recently used entries until the total fits."""
        if size > self.capacity:
            return  # larger than the whole cache: serve it, do not keep it
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, size)
            self._bytes += size
            while self._bytes > self.capacity and self._items:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass(frozen=True)
class Located:
    """An indexed instance and its parsed form."""

    record: InstanceRecord
    instance: Instance


# --------------------------------------------------------------------------- frame layouts


@dataclass(frozen=True, eq=False)
class FrameLayout:
    """Where each frame's stored bytes are in a blob: ``span(i) -> (offset, length)``.

    ``kind`` says what a span holds: ``native`` one frame of pixels (PS3.5 8.1.1, evenly
    spaced: ``first + i * step``), ``items`` whole fragment items (tag, length, value;
    PS3.5 A.4) whose values make the frame, ``fragment`` one fragment's value (an Extended
    Offset Table gives its offset and length, PS3.3 C.7.6.3.1.8).
    """

    kind: str
    count: int
    first: int = 0
    step: int = 0
    offsets: array[int] | None = None
    lengths: array[int] | None = None

    @classmethod
    def native(cls, first: int, step: int, count: int) -> FrameLayout:
        return cls("native", count, first, step)

    @classmethod
    def spans(cls, kind: str, spans: list[tuple[int, int]]) -> FrameLayout:
        return cls(kind, len(spans), offsets=array("Q", (o for o, _ in spans)),
                   lengths=array("Q", (n for _, n in spans)))

    def span(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.count:
            raise NotRenderable(f"frame {index + 1} is not in the pixel data ({self.count} found)")
        if self.offsets is None or self.lengths is None:
            return self.first + index * self.step, self.step
        return self.offsets[index], self.lengths[index]

    def nbytes(self) -> int:
        return 16 * (len(self.offsets) if self.offsets is not None else 0) + 256


def _fragment_values(data: bytes) -> bytes:
    """The values of the fragment items in ``data`` joined (PS3.5 A.4), as pydicom joins a
    frame's fragments; stops at a Sequence Delimiter."""
    out = []
    pos = 0
    while pos + 8 <= len(data):
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        tag = group << 16 | elem
        if tag == _SEQ_DELIMITER:
            break
        if tag != _ITEM or length == _UNDEFINED or pos + 8 + length > len(data):
            raise NotRenderable(f"malformed fragment item at byte {pos} of a frame")
        out.append(data[pos + 8:pos + 8 + length])
        pos += 8 + length
    return b"".join(out)


class RangedFrames:
    """A :data:`~pacs.render.FrameReader`: one ranged read per frame, through a frame map."""

    def __init__(self, blobs: BlobStore, key: str, layout: FrameLayout) -> None:
        self.blobs = blobs
        self.key = key
        self.layout = layout

    def __call__(self, index: int) -> bytes:
        offset, length = self.layout.span(index)
        data = self.blobs.get_range(self.key, offset, length)
        if len(data) < length:
            raise NotRenderable(f"pixel data of frame {index + 1} is truncated")
        return _fragment_values(data) if self.layout.kind == "items" else data


class _Window:
    """Ranged reads of one blob through a single read-ahead window (for headers and item
    walks, where many small reads are close together)."""

    def __init__(self, blobs: BlobStore, key: str, size: int, seed: bytes = b"") -> None:
        self.blobs, self.key, self.size = blobs, key, size
        self._at, self._data = 0, seed

    def read(self, offset: int, length: int, ahead: int = 0) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the blob); on a miss, read
        ``max(length, ahead)`` bytes into the window."""
        lo = offset - self._at
        if lo < 0 or lo + length > len(self._data):
            want = min(max(length, ahead), max(self.size - offset, 0))
            self._at = offset
            self._data = self.blobs.get_range(self.key, offset, want) if want else b""
            lo = 0
        return self._data[lo:lo + length]


@dataclass(frozen=True)
class _Fragment:
    item: int  # offset of the item tag
    length: int  # value length
    tail: bytes = b""  # last bytes of the value (for the EOI rule)

    @property
    def end(self) -> int:
        return self.item + 8 + self.length


def _walk(win: _Window, pos: int) -> list[_Fragment]:
    """The fragment items from ``pos`` to the Sequence Delimiter (PS3.5 A.4, 7.5), reading
    item headers and the last bytes of each value, never the rest of the fragments.

    Each read takes the next header with the previous value's last :data:`_TAIL` bytes (18
    bytes in all). After a fragment shorter than a quarter of :data:`WALK_CHUNK` the read
    takes a whole chunk instead: it holds at least four headers, and one read of 64 KB costs
    less than four round trips to any store.
    """
    frags: list[_Fragment] = []
    ahead = 0
    while True:
        tail_from = max(pos - _TAIL, frags[-1].item + 8) if frags else pos
        head = win.read(tail_from, pos + 8 - tail_from, ahead)
        if len(head) < pos + 8 - tail_from:
            raise NotRangeable("the fragment items end without a Sequence Delimiter")
        if frags:
            frags[-1] = _Fragment(frags[-1].item, frags[-1].length, head[:pos - tail_from])
        group, elem, length = struct.unpack_from("<HHI", head, pos - tail_from)
        tag = group << 16 | elem
        if tag == _SEQ_DELIMITER:
            return frags
        if tag != _ITEM or length == _UNDEFINED:
            raise NotRangeable(f"unexpected tag {tag:08X} among the fragment items")
        frags.append(_Fragment(pos, length))
        pos += 8 + length
        if pos > win.size:
            raise NotRangeable("a fragment item runs past the end of the blob")
        ahead = WALK_CHUNK if length < WALK_CHUNK // 4 else 0


def _group(frags: list[_Fragment], frames: int) -> list[list[_Fragment]]:
    """Fragments to frames without an offset table, by pydicom's rules (encaps.get_frame,
    after PS3.5 A.4): one fragment is one frame; as many fragments as frames, one each; a
    single frame takes them all; otherwise a frame ends at a JPEG EOI / J2K EOC marker."""
    if len(frags) == 1 or len(frags) == frames:
        return [[f] for f in frags]
    if frames == 1:
        return [frags]
    groups: list[list[_Fragment]] = [[]]
    for frag in frags:
        groups[-1].append(frag)
        if _EOI in frag.tail:
            groups.append([])
    if not groups[-1]:
        groups.pop()
    return groups


def _encapsulated_layout(inst: Instance, win: _Window) -> FrameLayout:
    """Locate the frames of encapsulated Pixel Data (PS3.5 A.4) as pydicom would find them."""
    at = inst.pixel_offset
    head = win.read(at, 8, WALK_CHUNK)
    if len(head) < 8:
        raise NotRangeable("the Basic Offset Table item is cut short")
    group, elem, bot_length = struct.unpack("<HHI", head)
    if group << 16 | elem != _ITEM or bot_length % 4 or bot_length == _UNDEFINED:
        raise NotRangeable("no valid Basic Offset Table item")
    base = at + 8 + bot_length  # offsets count from the first fragment's item tag
    extended = inst.extended_offsets()
    if extended is not None:
        # PS3.3 C.7.6.3.1.8: one fragment per frame; pydicom reads `length` bytes after the
        # item header at each offset (and prefers this table to the Basic one).
        spans = [(base + offset + 8, length) for offset, length in zip(*extended, strict=True)]
        if not spans or any(o + n > win.size for o, n in spans):
            raise NotRangeable("the Extended Offset Table points past the end of the blob")
        return FrameLayout.spans("fragment", spans)
    if bot_length:
        table = win.read(at + 8, bot_length, WALK_CHUNK)
        if len(table) < bot_length:
            raise NotRangeable("the Basic Offset Table is cut short")
        starts = [base + offset for offset in struct.unpack(f"<{bot_length // 4}I", table)]
        if any(b <= a for a, b in pairwise(starts)) or starts[0] != base:
            raise NotRangeable("the Basic Offset Table is not increasing from 0")
        # The last frame runs to the Sequence Delimiter: walk its (usually one) items.
        last = _walk(win, starts[-1])
        if not last:
            raise NotRangeable("the last frame has no fragments")
        ends = starts[1:] + [last[-1].end]
        return FrameLayout.spans("items", [(s, e - s) for s, e in zip(starts, ends, strict=True)])
    frags = _walk(win, base)
    if not frags:
        raise NotRangeable("no fragments")
    groups = _group(frags, inst.number_of_frames)
    return FrameLayout.spans("items", [(g[0].item, g[-1].end - g[0].item) for g in groups])


def _native_layout(inst: Instance, size: int) -> FrameLayout:
    """PS3.5 8.1.1: native frames follow each other with no padding between them."""
    step = inst.native_frame_length()
    if step is None:
        raise NotRangeable("frames do not start on byte boundaries")
    frames = inst.number_of_frames
    if inst.pixel_length is None or inst.pixel_length < frames * step or (
        inst.pixel_offset + frames * step > size
    ):
        raise NotRangeable("the Pixel Data value is shorter than its frames")
    return FrameLayout.native(inst.pixel_offset, step, frames)


def open_ranged(blobs: BlobStore, key: str, size: int,
                header_read: int = HEADER_READ) -> tuple[Instance, int]:
    """Open a stored instance by its header only; ``(instance, approximate bytes held)``.

    The instance reads each frame's bytes with one ranged read when it is decoded. Raises
    :class:`~pacs.render.NotRangeable` when the blob must be read whole instead, and what
    :meth:`Instance.from_bytes` raises for a broken file.
    """
    prefix = blobs.get_range(key, 0, min(header_read, size))
    while True:
        if len(prefix) >= size:  # the header read took the whole blob: nothing to range
            inst = Instance.from_bytes(prefix)
            return inst, inst.nbytes()
        inst_or_none = Instance.from_header(prefix)
        if inst_or_none is not None:
            break
        if len(prefix) >= HEADER_LIMIT:
            raise NotRangeable(f"no Pixel Data in the first {len(prefix)} bytes")
        more = blobs.get_range(key, len(prefix), min(len(prefix), size - len(prefix)))
        if not more:
            raise NotRangeable("the blob is shorter than its recorded size")
        prefix += more
    inst = inst_or_none
    if inst.transfer_syntax.is_encapsulated:
        layout = _encapsulated_layout(inst, _Window(blobs, key, size, prefix))
    else:
        layout = _native_layout(inst, size)
    return inst.with_reader(RangedFrames(blobs, key, layout)), inst.nbytes() + layout.nbytes()


# --------------------------------------------------------------------------- frame source


class FrameSource:
    """Find an instance in the index, read its blob (or its header and then frame by frame)
    once, decode frames once."""

    def __init__(self, index: Index, blobs: BlobStore, cache_bytes: int, *,
                 ranged_threshold: int = RANGED_THRESHOLD, header_read: int = HEADER_READ) -> None:
        self.index = index
        self.blobs = blobs
        self.cache = LRUCache(cache_bytes)
        self.ranged_threshold = ranged_threshold
        self.header_read = header_read
        # One decode per key at a time: concurrent requests for the same cold slice (the
        # viewer prefetching while the user scrolls) wait for the first instead of all decoding.
        self._loading: dict[Any, threading.Lock] = {}
        self._records: dict[str, tuple[float, InstanceRecord]] = {}
        self._loading_lock = threading.Lock()

    def record(self, study: str | None, series: str | None, sop: str) -> InstanceRecord:
        """The index row of ``sop``; NotFound unless it belongs to ``study``/``series`` when given.

        Rows are remembered for :data:`RECORD_TTL` seconds: a viewer scrolling or dragging the
        window asks for the same few instances many times a second. An instance replaced
        under the "overwrite" duplicate policy is seen at most that much later.
        """
        now = time.monotonic()
        hit = self._records.get(sop)
        if hit is not None and hit[0] > now:
            rec: InstanceRecord | None = hit[1]
        else:
            rec = self.index.get_instance(sop)
            if rec is not None:
                if len(self._records) > 50_000:
                    self._records.clear()
                self._records[sop] = (now + RECORD_TTL, rec)
        if rec is None or (study and rec.study_instance_uid != study) or (
            series and rec.series_instance_uid != series
        ):
            raise NotFound("no such instance")
        return rec

    def _once(self, key: Any, make: Callable[[], tuple[Any, int]]) -> Any:
        value = self.cache.get(key)
        if value is not None:
            return value
        with self._loading_lock:
            lock = self._loading.setdefault(key, threading.Lock())
        try:
            with lock:
                value = self.cache.get(key)
                if value is None:
                    value, size = make()
                    self.cache.put(key, value, size)
        finally:
            with self._loading_lock:
                if self._loading.get(key) is lock:
                    del self._loading[key]
        return value

    def instance(self, rec: InstanceRecord) -> Instance:
        """The parsed instance: whole, or header and frame map only when the blob is big."""
        def load() -> tuple[Instance, int]:
            size = rec.size if rec.size > 0 else self.blobs.size(rec.blob_key)
            if size >= self.ranged_threshold:
                try:
                    inst, nbytes = open_ranged(self.blobs, rec.blob_key, size, self.header_read)
                except NotRangeable as exc:
                    log.info("instance %s (%d bytes) is read whole: %s",
                             rec.sop_instance_uid, size, exc)
                else:
                    log.debug("instance %s (%d bytes, %d frames) is read by frame",
                              rec.sop_instance_uid, size, inst.number_of_frames)
                    return inst, nbytes
            inst = Instance.from_bytes(self.blobs.get(rec.blob_key))
            return inst, inst.nbytes()

        return self._once(("i", rec.blob_key), load)  # type: ignore[no-any-return]

    def frame(self, rec: InstanceRecord, number: int) -> Frame:
        """Decoded frame ``number`` (1-based) of an indexed instance."""
        def load() -> tuple[Frame, int]:
            fr = self.instance(rec).frame(number)
            return fr, fr.nbytes()

        return self._once(("f", rec.blob_key, number), load)  # type: ignore[no-any-return]
