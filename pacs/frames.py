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

import fcntl
import gc
import io
import logging
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import warnings
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from pacs.errors import InvalidInstance, NotFound, PacsError
from pacs.part5 import ITEM as _ITEM
from pacs.part5 import SEQUENCE_DELIMITER as _SEQ_DELIMITER
from pacs.part5 import UNDEFINED_LENGTH as _UNDEFINED
from pacs.render import (
    Frame,
    Instance,
    NotRangeable,
    NotRenderable,
    Viewport,
    Window,
    encode,
    render_file,
    thumbnail,
)
from pacs.store.blobs import BlobStore, FilesystemBlobStore
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
#: What a parsed header (pydicom Dataset) counts for in the cache, roughly.
HEADER_BYTES_ESTIMATE = 64 * 1024
#: Read size while walking fragment item headers (PS3.5 A.4) of small fragments.
WALK_CHUNK = 64 * 1024
#: Images rendered ahead of a viewer scrolling through a series (or a cine through frames).
AHEAD = 8
#: Only frames up to this many pixels are rendered ahead (slices, not radiographs).
AHEAD_MAX_PIXELS = 1024 * 1024
#: Rendered-ahead images kept waiting for their request, at most (bytes bound: AHEAD_MAX_BYTES each).
AHEAD_KEEP = 3 * AHEAD
AHEAD_MAX_BYTES = 2 * 1024 * 1024

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


def read_header(blobs: BlobStore, key: str, size: int, header_read: int = HEADER_READ) -> Dataset:
    """The instance's header (every element before Pixel Data) as a pydicom ``Dataset``,
    from ranged reads of the first bytes: a 300 MB cine's tags are in its first kilobytes.

    The prefix doubles until pydicom stops *at* Pixel Data (``stop_before_pixels`` leaves
    the stream on its tag) or the whole blob has been read (no pixel data: a report, a
    waveform). Raises :class:`~pacs.errors.InvalidInstance` for a file pydicom cannot read.
    """
    if size <= 0:
        size = blobs.size(key)
    prefix = blobs.get_range(key, 0, min(header_read, size))
    while True:
        whole = len(prefix) >= size or len(prefix) >= HEADER_LIMIT
        if whole and len(prefix) < size:
            prefix = blobs.get(key)
        stream = io.BytesIO(prefix)
        try:
            with warnings.catch_warnings():
                if not whole:  # a prefix cut inside an element: pydicom warns, we read more
                    warnings.simplefilter("ignore")
                ds = dcmread(stream, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many types for malformed input
            if whole:
                raise InvalidInstance(f"not a readable DICOM Part 10 file: {exc}") from exc
        else:
            if whole or stream.tell() < len(prefix):
                return ds
        more = blobs.get_range(key, len(prefix), min(len(prefix), size - len(prefix)))
        if not more:
            raise InvalidInstance("the blob is shorter than its recorded size")
        prefix += more


# --------------------------------------------------------------------------- frame source


def _read_exact(fd: int, size: int) -> bytes | None:
    """``size`` bytes from ``fd``; None at end of file."""
    parts, got = [], 0
    while got < size:
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _write_all(fd: int, *chunks: bytes) -> None:
    for chunk in chunks:
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]


def _send(fd: int, message: Any) -> None:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, struct.pack("<Q", len(payload)), payload)


def _receive(fd: int) -> Any:
    head = _read_exact(fd, 8)
    if head is None:
        raise EOFError
    payload = _read_exact(fd, struct.unpack("<Q", head)[0])
    if payload is None:
        raise EOFError
    return pickle.loads(payload)  # noqa: S301 - our own child process, over a private pipe


#: Longest a request waits for its image being rendered ahead (seconds): a backstop only,
#: the child answers within RESULT_MAX or is replaced.
PENDING_WAIT = 30.0
#: How often a wait for the child's answer checks that the child is still working (seconds).
#: An image takes milliseconds of work; a child that used no CPU at all for this long is
#: stuck and is killed (the next job forks a new one). The child is forked by a thread while
#: request threads run: if one of them held a lock the child then needs, the child would
#: wait for ever, and with it every image it owes. A child that is only slow (a machine under
#: load) keeps its CPU clock moving and is left alone, up to RESULT_MAX.
RESULT_TIMEOUT = 5.0
#: Longest the child may take for one image, working or not (seconds).
RESULT_MAX = 20.0


def _cpu_ticks(pid: int) -> int | None:
    """User plus system CPU time of a process in clock ticks (proc(5) fields 14 and 15), or
    None where /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()  # the name may hold spaces
        return int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None


def _release_orphaned_imports() -> None:
    """In a child just forked from a threaded process: forget imports other threads had under
    way at the fork. CPython resets its global import lock at fork, not the per-module locks:
    a module being imported by another thread stays locked (by a thread that does not exist
    here) and half-initialised in sys.modules, and the child's first import of it (Pillow
    loads its plugins lazily on the first save) would wait for ever. Dropping the locks and
    the half-made modules makes such an import start afresh. The calling thread is not
    importing anything, so every lock held is an orphan."""
    import importlib._bootstrap as bootstrap  # CPython's import machinery

    for table in ("_module_locks", "_blocking_on"):  # dicts (or dict-like) in 3.11 to 3.13
        clear = getattr(getattr(bootstrap, table, None), "clear", None)
        if callable(clear):
            clear()
    for name, module in list(sys.modules.items()):
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            del sys.modules[name]


class _Renderer:
    """A child process that renders and encodes files (:func:`pacs.render.render_file`) on its
    own interpreter lock.

    Why a process: a thread of this process rendering ahead shares the interpreter lock with
    the request threads (and waitress' loop); every numpy call or read it makes hands the lock
    back and waits for it, and it ran at half its speed. The child is forked from this process
    (sharing its loaded modules, copy-on-write), keeps only two pipes (every other inherited
    descriptor, client sockets included, is closed), and exits when this process closes its
    end or dies. It holds nothing between requests.
    """

    def __init__(self, read: Callable[[str], bytes] | None = None) -> None:
        #: Reads a blob by key in the child (a filesystem store: opens a path per call, so it
        #: works with the descriptors closed); without it the parent sends the bytes.
        self.read = read
        jobs_r, jobs_w = os.pipe()
        results_r, results_w = os.pipe()
        for fd in (jobs_w, results_w):  # a CT slice in one write, not sixteen (64 KiB default)
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
            except (OSError, AttributeError):
                pass
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 0
            try:
                self._child(jobs_r, results_w)
            except BaseException:  # noqa: BLE001 - nothing to report to: the parent sees EOF
                code = 1
            finally:
                os._exit(code)
        os.close(jobs_r)
        os.close(results_w)
        self.pid, self._jobs, self._results = pid, jobs_w, results_r
        self._lock = threading.Lock()
        self.alive = True

    def _child(self, jobs: int, results: int) -> None:
        _release_orphaned_imports()
        # Everything inherited stays out of this process' garbage collections: a collection
        # would otherwise walk (and so copy, page by page) the whole heap shared with the parent.
        gc.freeze()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        keep = {0, 1, 2, jobs, results}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        while True:
            try:
                job = _receive(jobs)
            except EOFError:
                return
            try:
                source, *rest = job
                raw = self.read(source) if isinstance(source, str) and self.read else source
                answer: tuple[str, Any] = ("ok", render_file(raw, *rest))
            except Exception as exc:  # noqa: BLE001 - the request renders it again and reports
                answer = ("error", f"{type(exc).__name__}: {exc}")
            _send(results, answer)

    def submit(self, source: bytes | str, number: int, params: tuple[Any, ...]) -> bool:
        """Queue a file for rendering (its bytes, or its blob key when the child can read it
        with ``read``); False if the child is gone. Answers come back in order (:meth:`result`)."""
        with self._lock:
            if not self.alive:
                return False
            try:
                _send(self._jobs, (source, number, *params))
            except OSError:
                self.close()
                return False
            return True

    def result(self) -> bytes | None:
        """The next rendered image, or None if the child could not make it (the request will)."""
        with self._lock:
            if not self.alive:
                return None
            try:
                self._wait_for_answer()
                status, value = _receive(self._results)
            except (OSError, EOFError):
                self.close()
                return None
        return value if status == "ok" else None  # type: ignore[no-any-return]

    def _wait_for_answer(self) -> None:
        """Return when an answer can be read; kill the child and raise EOFError if it is stuck
        (no CPU used for RESULT_TIMEOUT) or past RESULT_MAX. Under _lock."""
        started, ticks = time.monotonic(), _cpu_ticks(self.pid)
        while not select.select([self._results], [], [], RESULT_TIMEOUT)[0]:
            now = _cpu_ticks(self.pid)
            if now is None or now == ticks or time.monotonic() - started >= RESULT_MAX:
                log.warning("render-ahead child %d gave no answer in %.0f s (%s): replacing it",
                            self.pid, time.monotonic() - started,
                            "working" if now is not None and now != ticks else "idle")
                os.kill(self.pid, signal.SIGKILL)
                raise EOFError
            ticks = now

    def close(self) -> None:
        """Under _lock (or when nothing else uses it)."""
        if self.alive:
            self.alive = False
            for fd in (self._jobs, self._results):
                try:
                    os.close(fd)
                except OSError:
                    pass
            threading.Thread(target=_reap, args=(self.pid,), daemon=True).start()


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class _Pending:
    """An image being rendered ahead: its bytes once ``done`` is set (None if it failed)."""

    __slots__ = ("data", "done")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.data: bytes | None = None


@dataclass(frozen=True)
class _Series:
    """A series' instances in reading order (as the viewer scrolls them), for a while."""

    expires: float
    records: list[InstanceRecord]
    position: dict[str, int]


class FrameSource:
    """Find an instance in the index, read its blob (or its header and then frame by frame)
    once, decode frames once; render ahead of a viewer scrolling in one direction.

    Rendering ahead: when the requests of one connection walk a series one slice at a time
    (three in a row, same direction, same rendering parameters), the next :data:`AHEAD`
    slices are rendered and encoded on the core the request does not use, and handed to
    their requests when they arrive (byte for byte what the request would have made: the
    same pure functions). A background thread runs it; single-frame instances are rendered
    by a child process (:class:`_Renderer`, forked at the first rendered request, while the
    process is small: a child pins the memory it shares at fork time), other frames in the
    thread. It only runs while at most one rendered request is in progress in this process
    (so it never competes with other requests for the CPU), only for frames up to
    :data:`AHEAD_MAX_PIXELS`, and keeps at most :data:`AHEAD_KEEP` images (of at most
    :data:`AHEAD_MAX_BYTES`). Frames decoded in the thread go through the bounded cache.
    """

    def __init__(self, index: Index, blobs: BlobStore, cache_bytes: int, *,
                 ranged_threshold: int = RANGED_THRESHOLD, header_read: int = HEADER_READ,
                 ahead: int = AHEAD, ahead_process: bool = True) -> None:
        self.index = index
        self.blobs = blobs
        self.cache = LRUCache(cache_bytes)
        self.ranged_threshold = ranged_threshold
        self.header_read = header_read
        #: Images rendered ahead of a scroll; 0 turns it off (as does a cache of 0 bytes).
        self.ahead = ahead if cache_bytes > 0 else 0
        #: Render ahead in a child process (:class:`_Renderer`) rather than in a thread of this one.
        self.ahead_process = ahead_process and hasattr(os, "fork")
        self._renderer: _Renderer | None = None
        # One decode per key at a time: concurrent requests for the same cold slice (the
        # viewer prefetching while the user scrolls) wait for the first instead of all decoding.
        self._loading: dict[Any, threading.Lock] = {}
        self._records: dict[str, tuple[float, InstanceRecord]] = {}
        self._loading_lock = threading.Lock()
        # Rendering ahead (all under _cv): series lists, each sequence's last position and
        # step, images rendered or being rendered, the next job, requests in progress.
        self._cv = threading.Condition()
        self._series: dict[tuple[str, str], _Series] = {}
        self._series_wanted: list[tuple[str, str]] = []
        self._last: dict[Any, tuple[int, int]] = {}
        self._ready: OrderedDict[Any, _Pending] = OrderedDict()
        self._job: tuple[list[tuple[InstanceRecord, int]], tuple[Any, ...]] | None = None
        self._busy = 0
        self._worker_pid = 0
        #: Counters for tests and the curious: images served from the ahead renders, rendered.
        self.ahead_hits = 0
        self.ahead_renders = 0
        #: True while the render-ahead thread has a job in hand (under _cv).
        self.working = False

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
                self._remember(rec, now + RECORD_TTL)
        if rec is None or (study and rec.study_instance_uid != study) or (
            series and rec.series_instance_uid != series
        ):
            raise NotFound("no such instance")
        return rec

    def _remember(self, rec: InstanceRecord, expires: float) -> None:
        if len(self._records) > 50_000:
            self._records.clear()
        self._records[rec.sop_instance_uid] = (expires, rec)

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

    def _load_instance(self, rec: InstanceRecord) -> tuple[Instance, int]:
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

    def header(self, rec: InstanceRecord) -> Dataset:
        """The instance's header without pixel data (:func:`read_header`), parsed once per
        blob and kept in the bounded cache (for the overlays and the tag browser)."""
        return self._once(("h", rec.blob_key),  # type: ignore[no-any-return]
                          lambda: (read_header(self.blobs, rec.blob_key, rec.size, self.header_read),
                                   HEADER_BYTES_ESTIMATE))

    def instance(self, rec: InstanceRecord) -> Instance:
        """The parsed instance: whole, or header and frame map only when the blob is big."""
        return self._once(("i", rec.blob_key), lambda: self._load_instance(rec))  # type: ignore[no-any-return]

    def frame(self, rec: InstanceRecord, number: int) -> Frame:
        """Decoded frame ``number`` (1-based) of an indexed instance."""
        def load() -> tuple[Frame, int]:
            inst = self.cache.get(("i", rec.blob_key))
            if inst is None and number == 1 and rec.number_of_frames <= 1:
                # A single frame: only the decoded frame is kept (for a native image it is
                # a view of the stored bytes, so keeping the instance too would count them twice).
                inst, nbytes = self._load_instance(rec)
                if inst.number_of_frames > 1 or inst.by_frame:
                    self.cache.put(("i", rec.blob_key), inst, nbytes)
            elif inst is None:
                inst = self.instance(rec)
            fr = inst.frame(number)
            return fr, fr.nbytes()

        return self._once(("f", rec.blob_key, number), load)  # type: ignore[no-any-return]

    # ----------------------------------------------------------------------- rendered images

    def encoded(self, rec: InstanceRecord, number: int, window: Window | None,
                viewport: Viewport | None, media_type: str, quality: int | None) -> bytes:
        """Frame ``number`` rendered (:meth:`Frame.render`) and encoded (:func:`encode`)."""
        key = (rec.blob_key, number, window, viewport, media_type, quality)
        with self._cv:
            self._busy += 1
            pending = self._ready.pop(key, None)
            if self.ahead and self._worker_pid != os.getpid():
                self._start_worker()  # early: the child process is forked while we are small
        try:
            if self.ahead:
                self._note(rec, number, (window, viewport, media_type, quality))
            # An image being made ahead takes milliseconds; past PENDING_WAIT something is wrong
            # with the child (busy machine, stuck): render it here rather than stall the scroll.
            if pending is not None and pending.done.wait(PENDING_WAIT) and pending.data is not None:
                self.ahead_hits += 1
                return pending.data
            image = self.frame(rec, number).render(window, viewport)
            return encode(image, media_type, quality)
        finally:
            with self._cv:
                self._busy -= 1

    def thumbnail(self, rec: InstanceRecord, number: int, size: int, media_type: str,
                  quality: int | None) -> bytes:
        """Frame ``number`` with its default window, fitted inside ``size`` x ``size``, encoded."""
        return encode(thumbnail(self.frame(rec, number), size), media_type, quality)

    def _note(self, rec: InstanceRecord, number: int, params: tuple[Any, ...]) -> None:
        """Remember where this request is in its sequence; three steps of one slice in the
        same direction with the same parameters start rendering the next ones."""
        now = time.monotonic()
        if rec.number_of_frames > 1:  # a cine: the frames of one instance
            seq: Any = (rec.blob_key, params)
            pos, count = number - 1, rec.number_of_frames
            series = None
        else:
            where = (rec.study_instance_uid, rec.series_instance_uid)
            with self._cv:
                series = self._series.get(where)
                if series is None or series.expires <= now:
                    if where not in self._series_wanted:
                        self._series_wanted.append(where)
                        self._start_worker()
                        self._cv.notify()
                    if series is None:
                        return
            found = series.position.get(rec.sop_instance_uid)
            if found is None:
                return
            seq, pos, count = (where, params), found, len(series.records)
        with self._cv:
            last = self._last.get(seq)
            step = pos - last[0] if last is not None else 0
            if len(self._last) > 1000:
                self._last.clear()
            self._last[seq] = (pos, step)
            if step not in (1, -1) or last is None or last[1] != step:
                return
            ends = range(pos + step, max(-1, min(count, pos + step * (self.ahead + 1))), step)
            if series is None:
                items = [(rec, p + 1) for p in ends]
            else:
                # Rows from the index (columns are not there): images, and not radiographs.
                items = [(series.records[p], 1) for p in ends
                         if 0 < (series.records[p].rows or 0) ** 2 <= AHEAD_MAX_PIXELS]
            if items:
                self._job = (items, params)
                self._start_worker()
                self._cv.notify()

    def _start_worker(self) -> None:
        """Start the background thread in this process (once; again after a fork). Under _cv."""
        if self._worker_pid != os.getpid():
            self._worker_pid = os.getpid()
            threading.Thread(target=self._work, name="render-ahead", daemon=True).start()

    def _work(self) -> None:
        self._child()
        while True:
            with self._cv:
                while self._job is None and not self._series_wanted:
                    self._cv.wait()
                if self._series_wanted:
                    where, job = self._series_wanted[0], None
                else:
                    job, self._job = self._job, None
                self.working = True
            try:
                if job is None:
                    self._load_series(where)
                    with self._cv:
                        self._series_wanted.remove(where)
                    continue
                self._child()  # again if it died
                self._run_job(*job)
            finally:
                with self._cv:
                    self.working = False

    def _run_job(self, items: list[tuple[InstanceRecord, int]], params: tuple[Any, ...]) -> None:
        # Two images in flight in the child: it starts the next as soon as one is done.
        sent: list[tuple[Any, _Pending]] = []
        for rec, number in items:
            with self._cv:
                if self._job is not None or self._busy > 1:
                    break  # a newer scroll position, or other requests want the CPU
                key = (rec.blob_key, number, *params)
                if key in self._ready:
                    continue
                pending = self._ready[key] = _Pending()
                while len(self._ready) > AHEAD_KEEP:
                    self._ready.popitem(last=False)
            if self._submit(rec, number, params):
                sent.append((key, pending))
                if len(sent) >= 2:
                    self._received(*sent.pop(0))
                continue
            self._render_ahead(rec, number, params, pending)
            self._settled(key, pending)
        for key, pending in sent:
            self._received(key, pending)

    def _settled(self, key: Any, pending: _Pending) -> None:
        pending.done.set()
        with self._cv:
            if pending.data is None and self._ready.get(key) is pending:
                del self._ready[key]

    def _received(self, key: Any, pending: _Pending) -> None:
        renderer = self._renderer
        data = renderer.result() if renderer is not None else None
        if data is not None and len(data) <= AHEAD_MAX_BYTES:
            pending.data = data
            self.ahead_renders += 1
        self._settled(key, pending)

    def close(self) -> None:
        """Stop the render-ahead child process, if any (it also ends with this process)."""
        renderer, self._renderer, self.ahead_process = self._renderer, None, False
        if renderer is not None:
            with renderer._lock:  # noqa: SLF001 - after its current image
                renderer.close()

    def _child(self) -> _Renderer | None:
        """The child renderer, forked now if needed; only ever called by the render-ahead
        thread (PR_SET_PDEATHSIG ties the child to the thread that forked it, and this one
        lives as long as the process)."""
        if not self.ahead_process:
            return None
        if self._renderer is None or not self._renderer.alive:
            try:
                local = isinstance(self.blobs, FilesystemBlobStore)
                self._renderer = _Renderer(self.blobs.get if local else None)
            except OSError as exc:
                log.info("no render-ahead process (%s): rendering ahead in a thread", exc)
                self.ahead_process = False
                return None
        return self._renderer

    def _submit(self, rec: InstanceRecord, number: int, params: tuple[Any, ...]) -> bool:
        """Send a single-frame instance (read whole) to the child process; False: render here."""
        renderer = self._renderer
        if renderer is None or not renderer.alive or number != 1 or rec.number_of_frames > 1 or not (
            0 < rec.size < self.ranged_threshold
        ):
            return False
        try:
            source = rec.blob_key if renderer.read else self.blobs.get(rec.blob_key)
        except PacsError:
            return False
        return renderer.submit(source, number, params)

    def _render_ahead(self, rec: InstanceRecord, number: int, params: tuple[Any, ...],
                      pending: _Pending) -> None:
        window, viewport, media_type, quality = params
        try:
            fr = self.frame(rec, number)
            if fr.rows * fr.columns <= AHEAD_MAX_PIXELS:
                data = encode(fr.render(window, viewport), media_type, quality)
                if len(data) <= AHEAD_MAX_BYTES:
                    pending.data = data
                    self.ahead_renders += 1
        except (PacsError, MemoryError, OSError, ValueError) as exc:  # its request will say
            log.debug("render ahead of %s frame %d: %s", rec.sop_instance_uid, number, exc)
        except Exception:  # noqa: BLE001 - never kill the thread; the request reports it
            log.exception("render ahead of %s frame %d failed", rec.sop_instance_uid, number)

    def _load_series(self, where: tuple[str, str]) -> None:
        try:
            records = self.index.instances_of(*where)
        except Exception as exc:  # noqa: BLE001 - only an optimisation
            log.debug("series list for rendering ahead: %s", exc)
            return
        expires = time.monotonic() + RECORD_TTL
        for rec in records:
            self._remember(rec, expires)
        series = _Series(expires, records, {r.sop_instance_uid: i for i, r in enumerate(records)})
        with self._cv:
            if len(self._series) > 1000:
                self._series.clear()
            self._series[where] = series
