"""Server-side rendering of stored DICOM images to 8-bit PNG/JPEG/WebP (pure: no I/O, no Flask).

Pipeline (PS3.4 N.2 "Pixel Transformation Sequence", PS3.3 C.11, C.7.6.3)::

    stored values --Modality LUT--> modality values (HU...) --VOI--> 0..255
        --(MONOCHROME1 / Presentation LUT Shape INVERSE)--> inverted or not --> viewport --> encode

A parsed :class:`Instance` keeps the header and a reference to the stored bytes and decodes
one frame at a time. A decoded :class:`Frame` keeps only what re-windowing needs: the stored
values as offsets from the frame minimum in a compact dtype, plus the transforms. A render
builds one 8-bit lookup table over the stored-value range (stored value -> output grey through
Modality LUT, VOI and inversion) and indexes it, so a window change costs one table build of
at most 65,536 entries and one ``take`` over the pixels.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import re
import struct
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.pixels.processing import apply_color_lut, convert_color_space
from pydicom.pixels.utils import as_pixel_options
from pydicom.uid import UID, ExplicitVRLittleEndian

from pacs.errors import InvalidInstance, PacsError
from pacs.part5 import EXPLICIT_LE as _EXPLICIT_LE
from pacs.part5 import IMPLICIT_LE as _IMPLICIT_LE
from pacs.part5 import ITEM as _ITEM_TAG
from pacs.part5 import ITEM_DELIMITER as _ITEM_END_TAG
from pacs.part5 import LONG_VRS as _LONG_VRS
from pacs.part5 import PIXEL_DATA as _PIXEL_DATA_TAG
from pacs.part5 import SEQUENCE_DELIMITER as _SEQ_END_TAG
from pacs.part5 import UNDEFINED_LENGTH as _UNDEFINED_LENGTH

log = logging.getLogger(__name__)

__all__ = [
    "BadRenderRequest",
    "Frame",
    "FrameReader",
    "Instance",
    "NotRangeable",
    "NotRenderable",
    "RenderError",
    "Viewport",
    "Window",
    "encode",
    "thumbnail",
]


class RenderError(PacsError):
    """Base class of the rendering errors."""


class BadRenderRequest(RenderError):
    """A client parameter the renderer cannot honour (frame, window, viewport, quality, type)."""


class NotRenderable(RenderError, InvalidInstance):
    """The instance has no pixel data, or pixel data that cannot be decoded or interpreted."""


class NotRangeable(Exception):
    """The instance cannot be read frame by frame (deflated, bit-packed frames, a malformed
    encapsulation, ...): the caller reads the whole blob instead. Never reaches a client."""


#: Returns the stored bytes of frame ``index`` (0-based) of a header-only :class:`Instance`:
#: native pixels (exactly one frame), or an encapsulated frame's fragments joined (PS3.5 A.4).
FrameReader = Callable[[int], bytes]

#: PS3.5 A.4: an empty Basic Offset Table item, and the Sequence Delimiter that ends the items.
_EMPTY_BOT = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
#: PS3.5 7.1.2: explicit VRs of Pixel Data, all with a 4-byte length after 2 reserved bytes.
_PIXEL_VRS = ("OB", "OW", "UN")


#: VOI LUT Function values, PS3.3 C.11.2.1.3 (0028,1056).
FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
#: Largest viewport side we render (a bound on memory per request, not a DICOM limit).
MAX_VIEWPORT = 16384
#: Stored-value ranges up to this many entries are windowed through a lookup table.
MAX_LUT_ENTRIES = 1 << 16
DEFAULT_QUALITY = 90
MEDIA_TYPES = ("image/png", "image/jpeg", "image/webp")

_GRAY = ("MONOCHROME1", "MONOCHROME2")
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_Y_MAX = 255.0  # PS3.3 C.11.2.1.2: ymax of the 8-bit output range (ymin is 0)
#: What malformed header values raise while we read them (a missing or short element).
_BAD_VALUE = (AttributeError, KeyError, IndexError, TypeError, ValueError)


def finite_number(text: str, what: str) -> float:
    """``text`` as a finite float, else :class:`BadRenderRequest` naming ``what`` (a 400)."""
    try:
        value = float(text)
    except ValueError:
        raise BadRenderRequest(f"{what} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise BadRenderRequest(f"{what} must be finite, not {text!r}")
    return value


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and VOI LUT Function."""

    center: float
    width: float
    function: str = "LINEAR"

    def __post_init__(self) -> None:
        name = str(self.function).strip().upper().replace("-", "_")
        if name not in FUNCTIONS:
            raise BadRenderRequest(f"window function must be one of {', '.join(FUNCTIONS)}")
        object.__setattr__(self, "function", name)
        try:
            center, width = float(self.center), float(self.width)
        except (TypeError, ValueError):
            raise BadRenderRequest("window center and width must be numbers") from None
        if not (math.isfinite(center) and math.isfinite(width)):
            raise BadRenderRequest("window center and width must be finite numbers")
        object.__setattr__(self, "center", center)
        object.__setattr__(self, "width", width)
        # PS3.3 C.11.2.1.2.1: for LINEAR the width "shall always be greater than or equal
        # to 1"; C.11.2.1.3.1/2: SIGMOID and LINEAR_EXACT need it greater than 0.
        if name == "LINEAR" and self.width < 1:
            raise BadRenderRequest("a LINEAR window width must be >= 1")
        if self.width <= 0:
            raise BadRenderRequest(f"a {name} window width must be > 0")

    @classmethod
    def parse(cls, text: str) -> Window:
        """Parse ``center,width[,function]`` (PS3.18 8.3.5.1.4 ``window=``); function is
        ``linear``, ``linear-exact`` or ``sigmoid``, any case."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) not in (2, 3):
            raise BadRenderRequest("window must be center,width[,function]")
        center = finite_number(parts[0], "window center")
        width = finite_number(parts[1], "window width")
        return cls(center, width, parts[2] if len(parts) == 3 else "LINEAR")

    def apply(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Map modality values to 0..255 (real valued) with this window's function."""
        c, w = self.center, self.width
        if self.function == "SIGMOID":
            # PS3.3 C.11.2.1.3.1: y = (ymax - ymin) / (1 + exp(-4 (x - c) / w)) + ymin
            with np.errstate(over="ignore"):
                return _Y_MAX / (1.0 + np.exp(-4.0 * (x - c) / w))
        if self.function == "LINEAR_EXACT":
            # PS3.3 C.11.2.1.3.2: x <= c - w/2 -> ymin; x > c + w/2 -> ymax;
            # else ((x - c) / w + 0.5) * (ymax - ymin) + ymin. The clip is the same
            # piecewise function: the ramp is 0 and 1 exactly at the two borders.
            return np.clip((x - c) / w + 0.5, 0.0, 1.0) * _Y_MAX
        # PS3.3 C.11.2.1.2.1 (LINEAR): x <= c - 0.5 - (w-1)/2 -> ymin;
        # x > c - 0.5 + (w-1)/2 -> ymax;
        # else y = ((x - (c - 0.5)) / (w-1) + 0.5) * (ymax - ymin) + ymin.
        if w <= 1.0:  # w == 1: a threshold at c - 0.5 (the ramp above has no interior)
            return np.where(x > c - 0.5, _Y_MAX, 0.0)
        return np.clip((x - (c - 0.5)) / (w - 1.0) + 0.5, 0.0, 1.0) * _Y_MAX


@dataclass(frozen=True)
class Viewport:
    """Rendered size bound (PS3.18 8.3.5.1.3 ``viewport=vw,vh``): the image is scaled down to
    fit inside ``width`` x ``height`` with its aspect ratio kept; it is never enlarged."""

    width: int
    height: int

    def __post_init__(self) -> None:
        for side in (self.width, self.height):
            if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_VIEWPORT:
                raise BadRenderRequest(f"viewport sides must be integers 1..{MAX_VIEWPORT}")

    @classmethod
    def parse(cls, text: str) -> Viewport:
        """Parse ``vw,vh``. The source-region form ``vw,vh,sx,sy,sw,sh`` is not supported."""
        parts = [p.strip() for p in str(text).split(",")]
        if len(parts) == 6:
            raise BadRenderRequest("viewport source regions (sx,sy,sw,sh) are not supported")
        if len(parts) != 2:
            raise BadRenderRequest("viewport must be vw,vh")
        try:
            width, height = int(parts[0]), int(parts[1])
        except ValueError:
            raise BadRenderRequest(f"viewport must be two integers, not {text!r}") from None
        return cls(width, height)

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The size of a ``width`` x ``height`` image scaled to fit inside, never enlarged."""
        scale = min(self.width / width, self.height / height, 1.0)
        if scale >= 1.0:
            return width, height
        return (
            max(1, min(self.width, round(width * scale))),
            max(1, min(self.height, round(height * scale))),
        )


# --------------------------------------------------------------------------- header helpers


def _floats(value: Any) -> list[float]:
    """A DS/FD value (single or multi-valued, possibly empty or malformed) as floats."""
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            return []
    return out


def _first_item(ds: Dataset, keyword: str) -> Dataset | None:
    seq = ds.get(keyword)
    if seq is None:
        return None
    try:
        return seq[0] if len(seq) else None
    except (TypeError, IndexError):
        return None


def _functional_item(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """The ``keyword`` macro for frame ``index`` (0-based) of an enhanced multi-frame image.

    PS3.3 C.7.6.16: a functional group is in the Shared or in the Per-Frame Functional
    Groups Sequence; the per-frame item wins if both somehow carry it.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and index < len(per_frame):
        found = _first_item(per_frame[index], keyword)
        if found is not None:
            return found
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    return _first_item(shared, keyword) if shared is not None else None


def _windows_of(item: Dataset) -> list[Window]:
    """The valid (center, width) pairs of one dataset or Frame VOI LUT item (PS3.3 C.11.2)."""
    centers = _floats(item.get("WindowCenter"))
    widths = _floats(item.get("WindowWidth"))
    function = str(item.get("VOILUTFunction") or "LINEAR")
    out = []
    for center, width in zip(centers, widths, strict=False):
        try:
            out.append(Window(center, width, function))
        except BadRenderRequest:
            try:  # an unknown function: the pair itself is still usable as LINEAR
                out.append(Window(center, width))
            except BadRenderRequest:
                log.debug("ignoring unusable window %s/%s", center, width)
    return out


@dataclass(frozen=True, eq=False)
class _Lut:
    """A Modality or VOI LUT (PS3.3 C.11.1.1 / C.11.2.1.1): first mapped input, table, depth."""

    first: int
    table: NDArray[np.float64]
    bits: int

    @classmethod
    def from_item(cls, item: Dataset, little_endian: bool, signed_first: bool) -> _Lut:
        desc = [int(v) for v in item.LUTDescriptor]
        entries = desc[0] or 65536  # PS3.3 C.11.1.1.1: 0 means 2^16 entries
        first = desc[1]
        # The second value is US or SS (a negative first input); pydicom reads an
        # implicit-VR descriptor as US, so a negative value arrives as 2^16 + value.
        if signed_first and first >= 0x8000:
            first -= 0x10000
        bits = desc[2]
        data = item.LUTData
        table: NDArray[Any]
        if isinstance(data, (bytes, bytearray)):
            if bits <= 8 and len(data) in (entries, entries + 1):
                table = np.frombuffer(data, np.uint8, count=entries)
            else:
                table = np.frombuffer(data, "<u2" if little_endian else ">u2", count=entries)
        else:
            table = np.asarray(list(data) if isinstance(data, (MultiValue, list)) else [data])
        if table.size < entries or not 1 <= bits <= 16:
            raise ValueError("LUT Data shorter than its descriptor, or a bad depth")
        return cls(first, table[:entries].astype(np.float64), bits)

    def __call__(self, x: NDArray[Any]) -> NDArray[np.float64]:
        # Inputs below the first entry map to the first entry, above the last to the last.
        index = np.clip(np.floor(x + 0.5).astype(np.int64) - self.first, 0, self.table.size - 1)
        return self.table[index]


@dataclass(frozen=True)
class _Rescale:
    """PS3.3 C.11.1: modality value = stored * Rescale Slope + Rescale Intercept."""

    slope: float = 1.0
    intercept: float = 0.0

    def __call__(self, x: NDArray[Any]) -> NDArray[np.float64]:
        return x.astype(np.float64) * self.slope + self.intercept


_Modality = _Rescale | _Lut


# --------------------------------------------------------------------------- frames


class Frame:
    """One decoded frame, reusable for any number of renders."""

    rows: int
    columns: int

    def render(self, window: Window | None = None, viewport: Viewport | None = None) -> Image.Image:
        """The frame as an 8-bit ``L`` or ``RGB`` image, windowed and fitted to ``viewport``."""
        raise NotImplementedError

    def modality_value(self, x: int, y: int) -> float | tuple[int, int, int]:
        """The modality value (e.g. HU) at column ``x``, row ``y``; RGB for colour frames."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Approximate memory held by this frame."""
        raise NotImplementedError

    @property
    def default_window(self) -> Window | None:
        """The window a render without one uses (None for colour or a VOI LUT)."""
        return None

    def _check_xy(self, x: int, y: int) -> None:
        if not (isinstance(x, int) and isinstance(y, int)) or not (
            0 <= x < self.columns and 0 <= y < self.rows
        ):
            raise BadRenderRequest(
                f"pixel ({x}, {y}) is outside the {self.columns}x{self.rows} frame"
            )


def _fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return image
    size = viewport.fit(*image.size)
    if size == image.size:
        return image
    # reducing_gap=1: Pillow first shrinks by the whole factor floor(scale) with a box
    # filter (an area average, so no aliasing), then Lanczos does the remaining < 2x.
    # A 2048x2500 CR into 1024x1024 takes ~13 ms this way, ~35 ms with Lanczos alone.
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


class GrayFrame(Frame):
    """MONOCHROME1/2 frame: the stored values, indexed through one 8-bit table per window.

    8- and 16-bit values are kept as they were decoded (for native data, a view of the
    stored bytes: no copy) and index the table by their bit pattern, so a signed frame's
    negative values use the table's top end. Wider or masked values are kept as offsets
    from the frame minimum in the narrowest unsigned type.
    """

    _LUT_CACHE = 8
    #: Bytes of cached tables per frame (a signed 16-bit frame's tables have 65,536 entries).
    _LUT_BYTES = 128 * 1024

    def __init__(
        self,
        stored: NDArray[Any],
        modality: _Modality,
        window: Window | None,
        voi_lut: _Lut | None,
        invert: bool,
        extremes: tuple[int, int] | None = None,
    ) -> None:
        self.rows, self.columns = int(stored.shape[0]), int(stored.shape[1])
        smin, smax = extremes or (int(stored.min()), int(stored.max()))
        self.stored_min, self.stored_max = smin, smax
        span = smax - smin
        self._index: NDArray[Any]
        if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 2 and stored.ndim == 2:
            # Index by bit pattern: value v is table entry v mod 2^bits.
            self._index = stored.view(f"u{stored.dtype.itemsize}")
            self._by_pattern = True
            top = smax if smin >= 0 else (1 << (8 * stored.dtype.itemsize)) - 1
            self._table_size = top + 1
        else:
            # Offsets in the narrowest unsigned type: a window change only re-indexes them.
            # Computed in the unsigned type of the input width (modular arithmetic is exact
            # because every value lies in [smin, smax]), which avoids an int64 pass.
            if span < 256:
                dtype: type[np.unsignedinteger[Any]] = np.uint8
            elif span < 65536:
                dtype = np.uint16
            else:
                dtype = np.uint32
            if stored.dtype.kind in "iu" and stored.dtype.itemsize <= 4:
                unsigned = stored.view(f"u{stored.dtype.itemsize}")
                off = unsigned - unsigned.dtype.type(smin % (1 << (8 * stored.dtype.itemsize)))
            else:
                off = stored.astype(np.int64) - smin
            self._index = np.ascontiguousarray(off, dtype=dtype)
            self._by_pattern = False
            self._table_size = span + 1
        self._modality = modality
        self._window = window
        self._voi_lut = voi_lut
        self._invert = invert
        self._minmax: Window | None = None
        # Recent tables, so dragging back over a window (or a prefetch) reuses them; the lock
        # because one cached Frame serves concurrent requests.
        self._luts: OrderedDict[Window | None, NDArray[np.uint8]] = OrderedDict()
        self._lut_limit = max(1, min(self._LUT_CACHE, self._LUT_BYTES // max(1, self._table_size)))
        self._lock = threading.Lock()

    def stored_values(self, rows: slice = slice(None), columns: slice = slice(None)) -> NDArray[np.int64]:
        """The stored values (after masking to Bits Stored, sign-extended) of a region."""
        part = self._index[rows, columns].astype(np.int64)
        if not self._by_pattern:
            return part + self.stored_min
        if self.stored_min < 0:  # the bit patterns of negative values
            bits = 8 * self._index.dtype.itemsize
            part[part >= 1 << (bits - 1)] -= 1 << bits
        return part

    @property
    def default_window(self) -> Window | None:
        if self._window is not None:
            return self._window
        if self._voi_lut is not None:
            return None
        return self.minmax_window()

    def minmax_window(self) -> Window:
        """The window spanning the frame's modality values (PS3.3 C.11.2.1.2 with
        center = (min + max + 1) / 2, width = max - min + 1, so min -> 0 and max -> 255)."""
        if self._minmax is None:
            if isinstance(self._modality, _Rescale):
                ends = self._modality(np.array([self.stored_min, self.stored_max]))
                lo, hi = float(ends.min()), float(ends.max())
            else:  # a LUT need not be monotonic: look at the values present
                counts = np.bincount(self._index.ravel(), minlength=self._table_size)
                present = self._table_values()[counts[:self._table_size] > 0]
                values = self._modality(present)
                lo, hi = float(values.min()), float(values.max())
            self._minmax = Window((lo + hi + 1.0) / 2.0, hi - lo + 1.0)
        return self._minmax

    def _table_values(self) -> NDArray[np.int64]:
        """The stored value each table entry stands for (entries no pixel uses included)."""
        entries = np.arange(self._table_size, dtype=np.int64)
        if not self._by_pattern:
            return entries + self.stored_min
        bits = 8 * self._index.dtype.itemsize
        if self.stored_min < 0:
            entries[entries >= 1 << (bits - 1)] -= 1 << bits
        return entries

    def _grey(self, modality: NDArray[np.float64], window: Window | None) -> NDArray[np.uint8]:
        """Modality values -> 8-bit output (VOI, then inversion)."""
        if window is None:
            window = self._window
        if window is not None:
            y = window.apply(modality)
        elif self._voi_lut is not None:
            # PS3.3 C.11.2.1.1: the VOI LUT output spans 0 .. 2^bits - 1.
            y = self._voi_lut(modality) * (_Y_MAX / ((1 << self._voi_lut.bits) - 1))
        else:
            y = self.minmax_window().apply(modality)
        out = np.clip(np.floor(y + 0.5), 0, 255).astype(np.uint8)
        if self._invert:
            np.subtract(255, out, out=out)
        return out

    def lut(self, window: Window | None) -> NDArray[np.uint8]:
        """The table this frame's pixels index for ``window`` (stored value -> output grey)."""
        with self._lock:
            table = self._luts.get(window)
            if table is not None:
                self._luts.move_to_end(window)
                return table
        # Only the stored range [min, max] is computed; entries no pixel uses stay 0.
        smin, smax = self.stored_min, self.stored_max
        grey = self._grey(self._modality(np.arange(smin, smax + 1, dtype=np.int64)), window)
        if not self._by_pattern or (smin == 0 and grey.size == self._table_size):
            table = grey
        else:
            table = np.zeros(self._table_size, np.uint8)
            if smin >= 0:
                table[smin:] = grey
            else:  # negative values sit at the top end (their bit patterns)
                negative = min(-smin, grey.size)
                table[self._table_size - (-smin):self._table_size - (-smin) + negative] = grey[:negative]
                if smax >= 0:
                    table[:smax + 1] = grey[negative:]
        with self._lock:
            self._luts[window] = table
            while len(self._luts) > self._lut_limit:
                self._luts.popitem(last=False)
        return table

    def render(self, window: Window | None = None, viewport: Viewport | None = None) -> Image.Image:
        if self.stored_max - self.stored_min < MAX_LUT_ENTRIES:
            grey = np.take(self.lut(window), self._index)
        else:  # e.g. 32-bit dose grids: transform the pixels themselves
            grey = self._grey(self._modality(self.stored_values()), window)
        return _fit(Image.fromarray(grey, "L"), viewport)

    def modality_values(self, rows: slice = slice(None), columns: slice = slice(None)) -> NDArray[np.float64]:
        """Modality values (e.g. HU, PS3.3 C.11.1) of a region, for ROI statistics."""
        return np.asarray(self._modality(self.stored_values(rows, columns)), dtype=np.float64)

    def modality_value(self, x: int, y: int) -> float:
        self._check_xy(x, y)
        stored = int(self.stored_values(slice(y, y + 1), slice(x, x + 1))[0, 0])
        return float(self._modality(np.array([stored]))[0])

    def nbytes(self) -> int:
        root: Any = self._index  # a view of stored bytes holds all of them
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        held = int(root.nbytes) if hasattr(root, "nbytes") else len(root)
        return max(held, int(self._index.nbytes)) + self._lut_limit * self._table_size + 1024


class ColorFrame(Frame):
    """RGB frame (true colour after YBR conversion, or a PALETTE COLOR frame after its LUT)."""

    def __init__(self, rgb: NDArray[np.uint8]) -> None:
        self.rows, self.columns = int(rgb.shape[0]), int(rgb.shape[1])
        self._rgb = np.ascontiguousarray(rgb, dtype=np.uint8)

    def render(self, window: Window | None = None, viewport: Viewport | None = None) -> Image.Image:
        # PS3.4 N.2.2: colour images have no VOI stage, so a window is ignored (as dcm2pnm does).
        return _fit(Image.fromarray(self._rgb, "RGB"), viewport)

    def modality_value(self, x: int, y: int) -> tuple[int, int, int]:
        self._check_xy(x, y)
        r, g, b = (int(v) for v in self._rgb[y, x])
        return r, g, b

    def nbytes(self) -> int:
        return int(self._rgb.nbytes) + 256


# --------------------------------------------------------------------------- instances


def _to_8bit(values: NDArray[Any], bits: int) -> NDArray[np.uint8]:
    """Scale 0 .. 2^bits - 1 to 0..255 (rounded)."""
    if bits == 8:
        return values.astype(np.uint8)
    top = (1 << bits) - 1
    return ((values.astype(np.float64) * (255.0 / top)) + 0.5).astype(np.uint8)


def _stored_values(
    arr: NDArray[Any], bits_stored: int, high_bit: int, signed: bool
) -> tuple[NDArray[Any], int, int]:
    """The stored values and their min and max: only the Bits Stored bits ending at High
    Bit (PS3.5 8.1.1, PS3.3 C.7.6.3.1.1), sign-extended when Pixel Representation is 1.

    Bits above High Bit may hold garbage (old overlay planes) and some decoders return
    signed data as its unsigned bit pattern; either way values fall outside the range
    Bits Stored allows, which is when we mask (the min/max pass is needed anyway).
    """
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iu":
        raise NotRenderable(f"unexpected decoded pixel type {arr.dtype}")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    low, high = int(arr.min()), int(arr.max())
    bits = min(bits_stored, 8 * arr.dtype.itemsize)
    shift = max(high_bit + 1 - bits, 0)
    lo, hi = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1))
    if shift == 0 and lo <= low and high <= hi:
        return arr, low, high
    raw = arr.view(f"u{arr.dtype.itemsize}").astype(np.int64)
    raw = (raw >> shift) & ((1 << bits) - 1)
    if signed:
        sign = 1 << (bits - 1)
        raw = (raw ^ sign) - sign
    out = raw.astype(np.int32 if bits <= 31 else np.int64)
    return out, int(out.min()), int(out.max())


def _pixel_element(raw: bytes, at: int, tsyntax: UID) -> tuple[str, str, int, int]:
    """(keyword, VR, value offset, value length) of the pixel element at ``at`` (PS3.5 7.1),
    keyword "" when there is none; VR "" for implicit VR."""
    keyword, vr, start, length = "", "", at, 0
    head = raw[at:at + 12]
    if len(head) >= 8:
        endian = "<" if tsyntax.is_little_endian else ">"
        group, elem = struct.unpack(f"{endian}HH", head[:4])
        keyword = {0x0010: "PixelData", 0x0008: "FloatPixelData",
                   0x0009: "DoubleFloatPixelData"}.get(elem, "") if group == 0x7FE0 else ""
        if tsyntax.is_implicit_VR:
            length = struct.unpack(f"{endian}I", head[4:8])[0]
            start += 8
        else:
            vr = head[4:6].decode("ascii", "replace")
            if len(head) == 12:
                length = struct.unpack(f"{endian}I", head[8:12])[0]
            start += 12
    return keyword, vr, start, length


# --------------------------------------------------------------------------- native fast path
#
# Most stored images are uncompressed little-endian greyscale (CT, MR, CR, DX). For those,
# pydicom's reader and decoder cost more than everything else a cold render does (about
# 1.3 ms of a 512x512 CT slice's 2.5 ms). A Part 10 file is read here by a short walk over
# its element headers (PS3.5 7.1, PS3.10 7.1), keeping the few values rendering needs; the
# pixels are then a view of the stored bytes. Anything this walk does not fully understand
# (another transfer syntax, colour, LUT sequences, functional groups, a malformed or unusual
# value) returns None, and the caller takes pydicom's path, so the result never differs.

_SHORT_VRS = frozenset((b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"))
#: What the fast path reads: tag -> (keyword, VR). The keywords are pydicom's, so the values
#: serve the same helpers (``_windows_of``, ``_floats``, ...) as a pydicom Dataset would.
_FAST_TAGS: dict[int, tuple[str, bytes]] = {
    0x00181164: ("ImagerPixelSpacing", b"DS"),
    0x00280002: ("SamplesPerPixel", b"US"),
    0x00280004: ("PhotometricInterpretation", b"CS"),
    0x00280006: ("PlanarConfiguration", b"US"),
    0x00280008: ("NumberOfFrames", b"IS"),
    0x00280010: ("Rows", b"US"),
    0x00280011: ("Columns", b"US"),
    0x00280030: ("PixelSpacing", b"DS"),
    0x00280100: ("BitsAllocated", b"US"),
    0x00280101: ("BitsStored", b"US"),
    0x00280102: ("HighBit", b"US"),
    0x00280103: ("PixelRepresentation", b"US"),
    0x00281050: ("WindowCenter", b"DS"),
    0x00281051: ("WindowWidth", b"DS"),
    0x00281052: ("RescaleIntercept", b"DS"),
    0x00281053: ("RescaleSlope", b"DS"),
    0x00281056: ("VOILUTFunction", b"CS"),
    0x20500020: ("PresentationLUTShape", b"CS"),
}
#: Present at the top level, these change how pixels render in ways only the full path
#: handles (PS3.3 C.11.1 Modality LUT, C.11.2 VOI LUT, C.7.6.16 functional groups,
#: C.7.6.3 palettes), or are pixel data the fast path does not decode (float, PS3.5 8.2).
_FAST_REFUSED = frozenset((
    0x00281101, 0x00281102, 0x00281103, 0x00281201, 0x00281202, 0x00281203,
    0x00281221, 0x00281222, 0x00281223, 0x00283000, 0x00283010,
    0x52009229, 0x52009230, 0x7FE00001, 0x7FE00002, 0x7FE00008, 0x7FE00009,
))
#: A DS or IS value the fast path accepts: plain decimal numbers, where Python's float()
#: and pydicom agree by construction. Anything else goes to pydicom.
_DS_RE = re.compile(rb"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_IS_RE = re.compile(rb"[+-]?[0-9]+")


class _Unusual(Exception):
    """Something the fast header walk leaves to pydicom."""


def _skip_sequence(raw: bytes, pos: int, explicit: bool) -> int:
    """Skip the items of an undefined-length sequence from ``pos`` (after its header) to just
    after its Sequence Delimitation Item (PS3.5 7.5)."""
    unpack = struct.unpack_from
    size = len(raw)
    while True:
        if pos + 8 > size:
            raise _Unusual
        group, elem, length = unpack("<HHI", raw, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == _SEQ_END_TAG:
            return pos
        if tag != _ITEM_TAG:
            raise _Unusual
        if length != _UNDEFINED_LENGTH:
            pos += length
            continue
        while True:  # an undefined-length item: elements up to the Item Delimitation Item
            if pos + 8 > size:
                raise _Unusual
            group, elem = unpack("<HH", raw, pos)
            tag = group << 16 | elem
            if tag == _ITEM_END_TAG:
                pos += 8
                break
            pos, length, vr = _element_header(raw, pos, explicit)
            if length == _UNDEFINED_LENGTH:
                if vr not in (b"SQ", b"UN", b""):
                    raise _Unusual
                # PS3.5 6.2.2: an undefined-length UN holds implicit VR little endian.
                pos = _skip_sequence(raw, pos, explicit and vr == b"SQ")
            else:
                pos += length


def _element_header(raw: bytes, pos: int, explicit: bool) -> tuple[int, int, bytes]:
    """(value offset, value length, VR or b"" when implicit) of the element at ``pos``."""
    if not explicit:
        return pos + 8, struct.unpack_from("<I", raw, pos + 4)[0], b""
    vr = raw[pos + 4:pos + 6]
    if vr in _SHORT_VRS:
        return pos + 8, struct.unpack_from("<H", raw, pos + 6)[0], vr
    if vr in _LONG_VRS:
        return pos + 12, struct.unpack_from("<I", raw, pos + 8)[0], vr
    raise _Unusual  # pydicom would guess (e.g. switch to implicit VR): leave it to pydicom


def _fast_value(value: bytes, vr: bytes) -> Any:
    """A US, CS, DS or IS value as pydicom gives it (None when empty)."""
    if vr == b"US":
        if len(value) != 2:
            raise _Unusual
        return value[0] | value[1] << 8
    text = value.strip(b" \x00")
    if not text:
        return None
    parts = text.split(b"\\")
    if vr == b"CS":
        if len(parts) > 1 or not text.isascii():
            raise _Unusual
        return text.decode("ascii")
    items = [p.strip(b" ") for p in parts]
    pattern = _DS_RE if vr == b"DS" else _IS_RE
    if not all(pattern.fullmatch(p) for p in items):
        raise _Unusual
    if vr == b"IS":
        if len(items) > 1:
            raise _Unusual
        return int(items[0])
    strings = [p.decode("ascii") for p in items]
    return strings[0] if len(strings) == 1 else strings


def _fast_native_header(raw: bytes) -> tuple[dict[str, Any], dict[str, Any], int, int] | None:
    """(header values by keyword, pixel options, Pixel Data value offset, value length) of a
    native little-endian greyscale Part 10 file, or None when pydicom must read it."""
    try:
        if raw[128:132] != b"DICM":
            return None
        unpack = struct.unpack_from
        size = len(raw)
        pos = 132
        tsyntax = None
        while pos + 8 <= size:  # PS3.10 7.1: File Meta Information, explicit VR little endian
            group, elem = unpack("<HH", raw, pos)
            if group != 0x0002:
                break
            start, length, _ = _element_header(raw, pos, True)
            if length == _UNDEFINED_LENGTH or start + length > size:
                return None
            if elem == 0x0010:
                tsyntax = raw[start:start + length].rstrip(b" \x00").decode("ascii")
            pos = start + length
        if tsyntax not in (_IMPLICIT_LE, _EXPLICIT_LE):
            return None
        explicit = tsyntax == _EXPLICIT_LE
        values: dict[str, Any] = {}
        last = 0
        while True:
            if pos + 8 > size:
                return None  # no Pixel Data
            group, elem = unpack("<HH", raw, pos)
            tag = group << 16 | elem
            if tag <= last or tag in _FAST_REFUSED or tag > _PIXEL_DATA_TAG:
                return None
            last = tag
            start, length, vr = _element_header(raw, pos, explicit)
            if tag == _PIXEL_DATA_TAG:
                if length == _UNDEFINED_LENGTH or (vr and vr not in (b"OB", b"OW")):
                    return None
                break
            if length == _UNDEFINED_LENGTH:
                if vr not in (b"SQ", b"UN", b""):
                    return None
                pos = _skip_sequence(raw, start, explicit and vr == b"SQ")
                continue
            if start + length > size:
                return None
            wanted = _FAST_TAGS.get(tag)
            if wanted is not None:
                if vr and vr != wanted[1]:
                    return None
                values[wanted[0]] = _fast_value(raw[start:start + length], wanted[1])
            pos = start + length
    except (_Unusual, struct.error, UnicodeDecodeError, ValueError):
        return None
    photometric = values.get("PhotometricInterpretation")
    rows, columns = values.get("Rows"), values.get("Columns")
    bits_allocated, bits_stored = values.get("BitsAllocated"), values.get("BitsStored")
    samples = values.get("SamplesPerPixel", 1)
    representation = values.get("PixelRepresentation", 0)
    frames = values.get("NumberOfFrames", 1)
    if (
        photometric not in _GRAY or samples != 1 or representation not in (0, 1)
        or not rows or not columns or bits_allocated not in (8, 16, 32)
        or not bits_stored or bits_stored > bits_allocated
        or frames is None or frames < 1
    ):
        return None
    high_bit = values.setdefault("HighBit", bits_stored - 1)
    if high_bit is None or not bits_stored - 1 <= high_bit < bits_allocated:
        return None
    frame_bytes = rows * columns * bits_allocated // 8
    if length < frames * frame_bytes or start + frames * frame_bytes > size:
        return None
    opts: dict[str, Any] = {
        "samples_per_pixel": samples, "photometric_interpretation": photometric,
        "number_of_frames": frames, "rows": rows, "columns": columns,
        "bits_allocated": bits_allocated, "bits_stored": bits_stored,
        "pixel_representation": representation, "transfer_syntax_uid": UID(tsyntax),
        "pixel_keyword": "PixelData",
        "pixel_vr": vr.decode("ascii") if vr else ("OW" if bits_allocated > 8 else "OB"),
        "correct_unused_bits": high_bit == bits_stored - 1,
    }
    if "PlanarConfiguration" in values:
        opts["planar_configuration"] = values["PlanarConfiguration"]
    return values, opts, start, length


class Instance:
    """A stored instance parsed once: header attributes for rendering plus the raw bytes,
    from which frames are decoded one at a time.

    Two forms: :meth:`from_bytes` keeps the whole Part 10 file; :meth:`from_header` keeps only
    the header and, once given a :data:`FrameReader` (:meth:`with_reader`), fetches each
    frame's stored bytes when that frame is decoded. Both decode a frame to the same array.
    """

    def __init__(self, header: Dataset | dict[str, Any], buffer: bytes, start: int,
                 options: dict[str, Any], pixel_length: int | None = None) -> None:
        #: pydicom's Dataset, or the fast path's values by keyword (which answer the same
        #: ``get(keyword)`` calls for every attribute rendering reads).
        self._ds: Any = header
        self._buffer = buffer
        #: Offset of the Pixel Data value in the Part 10 file (in ``buffer`` when it is the file).
        self._start = start
        self._opts = options
        #: Pixel Data value length (None when undefined: encapsulated, PS3.5 A.4).
        self.pixel_length = pixel_length
        self._reader: FrameReader | None = None
        self.transfer_syntax = UID(options["transfer_syntax_uid"])
        self.rows = int(options["rows"])
        self.columns = int(options["columns"])
        self.number_of_frames = int(options["number_of_frames"])
        self.samples_per_pixel = int(options.get("samples_per_pixel", 1))
        self.photometric = str(options.get("photometric_interpretation", "")).strip().upper()
        self.bits_stored = int(options["bits_stored"])
        self.high_bit = int(header.get("HighBit", self.bits_stored - 1))
        self.signed = int(options.get("pixel_representation", 0)) == 1
        self._little = self.transfer_syntax.is_little_endian
        self._palette: NDArray[np.uint8] | None = None
        bits_allocated = int(options.get("bits_allocated") or 0)
        #: Native little-endian greyscale: frames are views of the stored bytes (no pydicom).
        self._native_dtype: np.dtype[Any] | None = None
        if (
            self.transfer_syntax in (_IMPLICIT_LE, _EXPLICIT_LE)
            and self.photometric in _GRAY and self.samples_per_pixel == 1
            and bits_allocated in (8, 16, 32) and 1 <= self.bits_stored <= bits_allocated
            and options.get("pixel_keyword") == "PixelData"
        ):
            kind = "i" if self.signed else "u"
            self._native_dtype = np.dtype(f"<{kind}{bits_allocated // 8}")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Instance:
        """Parse a Part 10 file. InvalidInstance if it is not DICOM, NotRenderable if it has
        no usable pixel data."""
        raw = bytes(raw)
        fast = _fast_native_header(raw)
        if fast is not None:
            values, opts, start, length = fast
            return cls(values, raw, start, opts, length)
        return cls.from_bytes_full(raw)

    @classmethod
    def from_bytes_full(cls, raw: bytes) -> Instance:
        """:meth:`from_bytes` through pydicom's reader, whatever the file (the fast path's
        reference, and its fallback)."""
        raw = bytes(raw)
        fp = io.BytesIO(raw)
        try:
            ds = dcmread(fp, stop_before_pixels=True)
            tsyntax = UID(ds.file_meta.TransferSyntaxUID)
            if not tsyntax.is_transfer_syntax:
                raise ValueError(f"unknown transfer syntax {tsyntax}")
        except Exception as exc:  # pydicom raises many types for malformed input
            raise InvalidInstance(f"not a readable DICOM Part 10 file: {exc}") from exc
        if tsyntax.is_deflated:
            # PS3.5 A.5: the whole dataset is deflated, so offsets into ``raw`` mean nothing;
            # inflate once and keep the (native) Pixel Data value.
            return cls._from_deflated(raw, ds)
        keyword, vr, start, _ = _pixel_element(raw, fp.tell(), tsyntax)
        return cls._build(ds, raw, start, tsyntax, keyword, vr)

    @classmethod
    def from_header(cls, prefix: bytes) -> Instance | None:
        """Parse the first bytes of a Part 10 file for reading it frame by frame.

        Returns None while ``prefix`` ends before the end of the Pixel Data element's own
        header (tag, VR, length: PS3.5 7.1.2): read more and call again. The result has no
        pixel bytes; give it a :data:`FrameReader` with :meth:`with_reader`. Raises
        :class:`NotRangeable` for deflated data (PS3.5 A.5: no byte offsets survive) and
        odd Pixel Data headers, :class:`NotRenderable` as :meth:`from_bytes` would.
        """
        fp = io.BytesIO(prefix)
        try:
            ds = dcmread(fp, stop_before_pixels=True)
            tsyntax = UID(ds.file_meta.TransferSyntaxUID)
            if not tsyntax.is_transfer_syntax:  # e.g. the UID itself is cut short
                return None
        except Exception:  # noqa: BLE001 - most likely cut short: the whole file tells for sure
            return None
        if tsyntax.is_deflated:
            raise NotRangeable("a deflated dataset has no byte offsets")
        at = fp.tell()
        need = 8 if tsyntax.is_implicit_VR else 12
        if at + need > len(prefix):
            return None
        keyword, vr, start, length = _pixel_element(prefix, at, tsyntax)
        if not keyword:
            return None  # pydicom stopped before something else: only the whole file tells
        if keyword == "PixelData":
            if vr and vr not in _PIXEL_VRS:
                raise NotRangeable(f"Pixel Data with VR {vr!r}")
            # PS3.5 A.4: encapsulated Pixel Data has an undefined length, native a defined one.
            if (length == _UNDEFINED_LENGTH) != tsyntax.is_encapsulated:
                raise NotRangeable("Pixel Data length does not match the transfer syntax")
        inst = cls._build(ds, b"", start, tsyntax, keyword, vr)
        inst.pixel_length = None if length == _UNDEFINED_LENGTH else length
        return inst

    def with_reader(self, reader: FrameReader) -> Instance:
        """A copy of this header-only instance that decodes frames from ``reader``'s bytes."""
        if self._buffer:
            raise ValueError("the instance already holds its pixel data")
        other = copy.copy(self)
        other._reader = reader
        return other

    @property
    def by_frame(self) -> bool:
        """True when frames are read one at a time through a :data:`FrameReader`."""
        return self._reader is not None

    @property
    def pixel_offset(self) -> int:
        """Offset of the Pixel Data value in the Part 10 file (after its tag, VR and length)."""
        return self._start

    def native_frame_length(self) -> int | None:
        """Bytes per frame of native pixel data; None when frames cannot be read alone.

        PS3.5 8.1.1: native frames are contiguous, but with Bits Allocated 1 a frame need not
        start on a byte boundary. In Explicit VR Big Endian, 8-bit data in OW words is byte
        swapped in pairs (PS3.5 Annex A.3 / 8.2), so an odd-length frame shares a word with
        its neighbour. Both are read whole.
        """
        if self.transfer_syntax.is_encapsulated:
            return None
        runner = DecodeRunner(self.transfer_syntax)
        runner.set_options(**self._opts)
        length = runner.frame_length(unit="bytes")  # YBR_FULL_422 subsampling included
        bits = int(self._opts["bits_allocated"])
        if not isinstance(length, int) or bits == 1 or length < 1:
            return None
        # pydicom's "be_swap_ow" case (Decoder._as_array_native).
        if not self._little and bits == 8 and self._opts.get("pixel_vr") == "OW" and length % 2:
            return None
        return length

    def extended_offsets(self) -> tuple[list[int], list[int]] | None:
        """The Extended Offset Table (7FE0,0001) and its Lengths (7FE0,0002), PS3.3 C.7.6.3.1.8,
        when both are present with as many entries: pydicom then uses it before the Basic
        Offset Table, and so must a frame-by-frame reader."""
        pair = self._opts.get("extended_offsets")
        if not pair:
            return None
        offsets, lengths = (bytes(v) if isinstance(v, (bytes, bytearray)) else v for v in pair)
        if len(offsets) != len(lengths):
            return None  # pydicom ignores such a table too (DecodeRunner._validate_options)
        if isinstance(offsets, bytes) and isinstance(lengths, bytes):
            count = len(offsets) // 8
            return (list(struct.unpack(f"<{count}Q", offsets[:8 * count])),
                    list(struct.unpack(f"<{count}Q", lengths[:8 * count])))
        return [int(v) for v in offsets], [int(v) for v in lengths]

    @classmethod
    def _from_deflated(cls, raw: bytes, header: Dataset) -> Instance:
        try:
            full = dcmread(io.BytesIO(raw))
            elem = full.data_element("PixelData")
        except Exception as exc:
            raise NotRenderable(f"cannot inflate the deflated dataset: {exc}") from exc
        if elem is None or elem.value is None:
            return cls._build(header, b"", 0, ExplicitVRLittleEndian, "", "")
        return cls._build(header, bytes(elem.value), 0, ExplicitVRLittleEndian, "PixelData",
                          elem.VR)

    @classmethod
    def _build(cls, ds: Dataset, buffer: bytes, start: int, tsyntax: UID, keyword: str,
               vr: str) -> Instance:
        if keyword in ("FloatPixelData", "DoubleFloatPixelData"):
            raise NotRenderable("float pixel data (parametric maps) cannot be rendered")
        if keyword != "PixelData":
            raise NotRenderable("the instance has no Pixel Data")
        try:
            opts = as_pixel_options(ds)
            for required in ("rows", "columns", "bits_allocated", "bits_stored",
                             "photometric_interpretation"):
                if opts.get(required) in (None, ""):
                    raise ValueError(f"missing {required}")
            if int(opts["rows"]) < 1 or int(opts["columns"]) < 1:
                raise ValueError("empty image")
            opts.setdefault("samples_per_pixel", 1)
            opts.setdefault("pixel_representation", 0)
            if int(opts["samples_per_pixel"]) > 1:
                opts.setdefault("planar_configuration", 0)
            opts["number_of_frames"] = max(1, int(opts["number_of_frames"]))
            opts["transfer_syntax_uid"] = tsyntax
            opts["pixel_keyword"] = "PixelData"
            # PS3.5 8.2: implicit VR native data is OW when more than 8 bits are allocated.
            opts["pixel_vr"] = vr or ("OW" if int(opts["bits_allocated"]) > 8 else "OB")
            inst = cls(ds, buffer, start, opts)
            # pydicom masks unused bits assuming High Bit = Bits Stored - 1; when the stored
            # bits sit higher (PS3.5 8.1.1 allows it) we shift them down ourselves.
            opts["correct_unused_bits"] = inst.high_bit == inst.bits_stored - 1
        except Exception as exc:
            raise NotRenderable(f"unusable Image Pixel module: {exc}") from exc
        if inst.photometric not in _GRAY + _COLOR + ("PALETTE COLOR",):
            raise NotRenderable(f"photometric interpretation {inst.photometric!r} is not supported")
        try:
            get_decoder(tsyntax)
        except NotImplementedError:  # e.g. MPEG/HEVC video: no pixel decoder in pydicom
            raise NotRenderable(f"no decoder for transfer syntax {tsyntax.name}") from None
        return inst

    # -- header-derived values

    def windows(self) -> list[Window]:
        """The file's own windows (presets): Window Center/Width pairs with the VOI LUT
        Function (PS3.3 C.11.2), or the enhanced image's Frame VOI LUT (C.7.6.16.2.10)."""
        if self.photometric not in _GRAY:
            return []
        found = _windows_of(self._ds)
        if not found:
            item = _functional_item(self._ds, 0, "FrameVOILUTSequence")
            found = _windows_of(item) if item is not None else []
        return found

    def spacing(self) -> tuple[float, float, str] | None:
        """(row spacing mm, column spacing mm, source attribute), None when uncalibrated.

        PS3.3 10.7.1.3: Pixel Spacing is in the patient; Imager Pixel Spacing is at the
        detector (a projection radiograph's magnification not corrected), so the caller
        must say which one a measurement used. Zero or missing values mean uncalibrated.
        """
        candidates: list[tuple[Any, str]] = [(self._ds.get("PixelSpacing"), "PixelSpacing")]
        measures = _functional_item(self._ds, 0, "PixelMeasuresSequence")
        if measures is not None:
            candidates.append((measures.get("PixelSpacing"), "PixelSpacing"))
        candidates.append((self._ds.get("ImagerPixelSpacing"), "ImagerPixelSpacing"))
        for value, source in candidates:
            pair = _floats(value)
            if len(pair) == 2 and all(math.isfinite(v) and v > 0 for v in pair):
                return pair[0], pair[1], source
        return None

    def nbytes(self) -> int:
        """Approximate memory held: the stored bytes (none for a header-only instance) plus a
        parsed header estimate."""
        return len(self._buffer) + 4 * self._start + 4096

    def _modality(self, index: int) -> _Modality:
        """PS3.3 C.11.1: a Modality LUT Sequence wins over Rescale Slope/Intercept; an
        enhanced image carries the rescale in its Pixel Value Transformation macro
        (C.7.6.16.2.9), per frame or shared."""
        item = _first_item(self._ds, "ModalityLUTSequence")
        if item is not None:
            try:
                return _Lut.from_item(item, self._little, signed_first=self.signed)
            except _BAD_VALUE as exc:
                log.warning("ignoring unusable Modality LUT Sequence: %s", exc)
        source: Dataset = self._ds
        pvt = _functional_item(self._ds, index, "PixelValueTransformationSequence")
        if pvt is not None and "RescaleSlope" in pvt:
            source = pvt
        slope = _floats(source.get("RescaleSlope"))
        intercept = _floats(source.get("RescaleIntercept"))
        return _Rescale(
            slope[0] if slope and slope[0] != 0 else 1.0,
            intercept[0] if intercept else 0.0,
        )

    def _voi(self, index: int, modality: _Modality) -> tuple[Window | None, _Lut | None]:
        """The frame's own VOI: first window, else first VOI LUT (PS3.3 C.11.2)."""
        item = _functional_item(self._ds, index, "FrameVOILUTSequence")
        for source in (item, self._ds):
            if source is None:
                continue
            windows = _windows_of(source)
            if windows:
                return windows[0], None
        for source in (item, self._ds):
            lut_item = _first_item(source, "VOILUTSequence") if source is not None else None
            if lut_item is None:
                continue
            try:
                negative = isinstance(modality, _Rescale) and modality.intercept < 0
                return None, _Lut.from_item(lut_item, self._little,
                                            signed_first=negative or self.signed)
            except _BAD_VALUE as exc:
                log.warning("ignoring unusable VOI LUT Sequence: %s", exc)
        return None, None

    def _inverted(self) -> bool:
        """PS3.3 C.11.6.1: Presentation LUT Shape INVERSE "shall be used if Photometric
        Interpretation is MONOCHROME1" and IDENTITY "other than to account for the value of
        Photometric Interpretation", so both describe one inversion: MONOCHROME1 or INVERSE
        inverts once, never twice."""
        shape = str(self._ds.get("PresentationLUTShape") or "").strip().upper()
        return self.photometric == "MONOCHROME1" or shape == "INVERSE"

    # -- decoding

    def _source(self, index: int) -> tuple[Any, int, dict[str, Any]]:
        """What pydicom decodes frame ``index`` from: (source, index in it, options)."""
        if self._reader is None:
            src = io.BytesIO(self._buffer)  # shares the bytes; one position per call (thread-safe)
            src.seek(self._start)
            return src, index, self._opts
        data = self._reader(index)  # storage errors pass through: they are not the file's fault
        if self.transfer_syntax.is_encapsulated:
            # One frame as one fragment after an empty Basic Offset Table (PS3.5 A.4): pydicom
            # joins a frame's fragments before decoding, so this is byte for byte what it
            # decodes from the whole file.
            data = b"".join((_EMPTY_BOT, struct.pack("<HHI", 0xFFFE, 0xE000, len(data)), data,
                             _SEQ_DELIMITER))
        opts = {k: v for k, v in self._opts.items() if k != "extended_offsets"}
        opts["number_of_frames"] = 1
        return data, 0, opts

    def _native(self, index: int) -> NDArray[Any] | None:
        """Frame ``index`` of native little-endian greyscale data as a view of its stored
        bytes (what pydicom's native decoder returns before masking unused bits, which
        :func:`_stored_values` does); None when the bytes fall short (pydicom decides)."""
        dtype = self._native_dtype
        if dtype is None:
            return None
        count = self.rows * self.columns
        length = count * dtype.itemsize
        if self._reader is None:
            data = self._buffer
            offset = self._start + index * length
            end = len(data) if self.pixel_length is None else min(
                len(data), self._start + self.pixel_length)
        else:
            data = self._reader(index)
            offset, end = 0, len(data)
        if offset + length > end:
            return None
        arr = np.frombuffer(data, dtype, count, offset).reshape(self.rows, self.columns)
        # A frame may stay cached without its instance: it must not hold a whole
        # multi-frame file alive (a single frame's file is barely larger than the frame).
        return arr.copy() if len(data) > 2 * length else arr

    def _decode(self, index: int) -> tuple[NDArray[Any], str]:
        arr = self._native(index)
        if arr is not None:
            return arr, self.photometric
        src, at, opts = self._source(index)
        try:
            decoder = get_decoder(self.transfer_syntax)
            arr, meta = decoder.as_array(src, index=at, **opts)
        except MemoryError:
            raise
        except Exception as exc:  # codec plugins raise ValueError, RuntimeError, ...
            # The codec chain's message lists every plugin tried; the first line is enough.
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NotRenderable(f"cannot decode frame {index + 1}: {first_line}") from exc
        photometric = str(meta.get("photometric_interpretation", self.photometric)).upper()
        return arr, photometric

    def frame(self, number: int) -> Frame:
        """Decode frame ``number`` (1-based, PS3.18 8.3.5.1.1) into a reusable Frame."""
        if isinstance(number, bool) or not isinstance(number, (int, np.integer)) or not (
            1 <= number <= self.number_of_frames
        ):
            raise BadRenderRequest(
                f"frame {number} is out of range: the instance has {self.number_of_frames}"
            )
        index = int(number) - 1
        arr, photometric = self._decode(index)
        try:
            if self.photometric in _GRAY:
                if arr.ndim != 2:
                    raise NotRenderable(f"a grayscale frame decoded to shape {arr.shape}")
                return self._gray(arr, index)
            if self.photometric == "PALETTE COLOR":
                return ColorFrame(self._apply_palette(arr))
            return ColorFrame(self._rgb(arr, photometric))
        except (NotRenderable, MemoryError):
            raise
        except Exception as exc:
            raise NotRenderable(f"cannot interpret frame {number}: {exc}") from exc

    def _gray(self, arr: NDArray[Any], index: int) -> GrayFrame:
        stored, low, high = _stored_values(arr, self.bits_stored, self.high_bit, self.signed)
        modality = self._modality(index)
        window, voi_lut = self._voi(index, modality)
        return GrayFrame(stored, modality, window, voi_lut, self._inverted(), (low, high))

    def _rgb(self, arr: NDArray[Any], photometric: str) -> NDArray[np.uint8]:
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise NotRenderable(f"a colour frame decoded to shape {arr.shape}")
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            # The decoder left YCbCr (e.g. a JPEG without the usual markers): PS3.3
            # C.7.6.3.1.2 defines YBR_FULL with the JPEG (JFIF) equations.
            arr = convert_color_space(arr, photometric, "RGB")
        if arr.dtype != np.uint8:
            bits = self.bits_stored
            arr = _to_8bit(arr & ((1 << bits) - 1), bits) if bits > 8 else arr.astype(np.uint8)
        return np.asarray(arr, dtype=np.uint8)

    def _palette_table(self) -> NDArray[np.uint8]:
        """The PALETTE COLOR lookup (PS3.3 C.7.6.3.1.5/6) over every index the bits allow."""
        if self._palette is not None:
            return self._palette
        ds = self._ds
        desc = [int(v) for v in ds.RedPaletteColorLookupTableDescriptor]
        entries = desc[0] or 65536
        first = desc[1] - 0x10000 if self.signed and desc[1] >= 0x8000 else desc[1]
        bits = desc[2]
        size = 1 << min(self.bits_stored, 16)
        index = np.arange(size, dtype=np.int64)
        if self.signed:
            index = np.where(index >= size // 2, index - size, index)
        if "SegmentedRedPaletteColorLookupTableData" in ds:
            # C.7.9.2 segmented tables: pydicom expands them (on a ramp of entry numbers).
            ramp = np.arange(first, first + entries, dtype=np.int64)
            table = np.asarray(apply_color_lut(ramp, ds))[:, :3].astype(np.float64)
        else:
            channels = []
            for colour in ("Red", "Green", "Blue"):
                data = ds[f"{colour}PaletteColorLookupTableData"].value
                if bits == 8 and len(data) in (entries, entries + 1):
                    channels.append(np.frombuffer(data, np.uint8, count=entries))
                else:
                    # PS3.3 C.7.6.3.1.6: 16-bit entries (or 8-bit entries in 16-bit words)
                    dtype = "<u2" if self._little else ">u2"
                    channels.append(np.frombuffer(data, dtype, count=entries))
            table = np.stack(channels, axis=1).astype(np.float64)
        if bits == 16 and float(table.max()) > 255:
            # 16-bit entries: keep the most significant byte, as DCMTK does; devices that
            # store 8-bit colours as value * 256 (0xFF00 for full scale) get them back exactly.
            table = np.floor(table / 256.0)
        # A descriptor saying 16 bits over data that never exceeds 255 is the well-known
        # 8-bit-palette-in-16-bit-words encoding: the values are used as they are.
        lut = np.clip(table, 0, 255).astype(np.uint8)
        # Indices below the first entry use the first, above the last use the last (C.7.6.3.1.5).
        self._palette = lut[np.clip(index - first, 0, entries - 1)]
        return self._palette

    def _apply_palette(self, arr: NDArray[Any]) -> NDArray[np.uint8]:
        if arr.ndim != 2:
            raise NotRenderable(f"a palette frame decoded to shape {arr.shape}")
        table = self._palette_table()
        # Signed indices address the table by their bit pattern (it was built that way).
        idx = arr.astype(np.int64) & (table.shape[0] - 1) if arr.dtype.kind == "i" else arr
        rgb: NDArray[np.uint8] = table[np.minimum(idx, table.shape[0] - 1)]
        return rgb


# --------------------------------------------------------------------------- output


def encode(image: Image.Image, media_type: str, quality: int | None = None) -> bytes:
    """Encode as ``image/png`` (lossless), ``image/jpeg`` or ``image/webp`` (quality 1..100,
    default 90); PS3.18 8.3.5.1.2 ``quality=`` is ignored for PNG."""
    kind = media_type.split(";")[0].strip().lower()
    if kind not in MEDIA_TYPES:
        raise BadRenderRequest(f"cannot render as {media_type!r}; use {', '.join(MEDIA_TYPES)}")
    if quality is not None and (
        isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100
    ):
        raise BadRenderRequest("quality must be an integer 1..100")
    out = io.BytesIO()
    if kind == "image/png":
        # zlib's run-length strategy at level 1: after PNG's row filters a medical image is
        # mostly runs (air, flat tissue). Measured on a 512x512 CT slice: 3.7 ms and 59 KB,
        # against 13.6 ms and 67 KB with the default strategy at level 1; still lossless.
        image.save(out, "PNG", compress_level=1, compress_type=zlib.Z_RLE)
    elif kind == "image/jpeg":
        image.save(out, "JPEG", quality=quality or DEFAULT_QUALITY)
    else:
        image.save(out, "WEBP", quality=quality or DEFAULT_QUALITY, method=2)
    return out.getvalue()


def thumbnail(frame: Frame, size: int = 128) -> Image.Image:
    """The frame with its default window, fitted inside ``size`` x ``size``."""
    return frame.render(None, Viewport(size, size))


def render_file(raw: bytes, number: int, window: Window | None, viewport: Viewport | None,
                media_type: str, quality: int | None) -> bytes:
    """A Part 10 file's frame ``number`` rendered and encoded, in one call (bytes in, bytes out)."""
    return encode(Instance.from_bytes(raw).frame(number).render(window, viewport), media_type, quality)
