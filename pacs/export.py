"""A study as a ZIP of DICOM files with a DICOMDIR, streamed (PS3.10 file-set, PS3.3 F.5).

The ZIP is produced chunk by chunk while the instances are read one at a time, so a
study of any size goes out with the memory of one instance. Files are named like a
removable-media file-set (PS3.10 8.5: up to 8 upper-case characters per component), so the
unpacked folder opens in any DICOM viewer that reads a DICOMDIR (e.g. a CD viewer).
Compressed transfer syntaxes are stored as they are; uncompressed ones are deflated
(fast level): that halves a typical CT download over a district hospital's link.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs.part5 import BIG_ENDIAN, EXPLICIT_LE, IMPLICIT_LE

#: Media Storage Directory Storage (PS3.4 Annex F).
DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
_UNCOMPRESSED = {IMPLICIT_LE, EXPLICIT_LE, BIG_ENDIAN}


class _Sink(io.RawIOBase):
    """A write-only stream whose bytes are collected and handed out by :meth:`take`."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(b))
        self._pos += len(b)
        return len(b)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        out = b"".join(self._parts)
        self._parts.clear()
        return out


@dataclass
class _Entry:
    """What the DICOMDIR needs to know about one written file."""

    file_id: list[str]
    ds: Dataset  # header only


@dataclass
class _Tree:
    patients: dict[str, dict[str, dict[str, list[_Entry]]]] = field(default_factory=dict)


def _keep(ds: Dataset, keywords: Iterable[str]) -> Dataset:
    out = Dataset()
    for kw in keywords:
        if kw in ds:
            setattr(out, kw, ds.data_element(kw).value)  # type: ignore[union-attr]
        else:
            setattr(out, kw, "")
    return out


def _record(kind: str, ds: Dataset, keywords: tuple[str, ...]) -> Dataset:
    rec = _keep(ds, keywords)
    rec.OffsetOfTheNextDirectoryRecord = 0
    rec.RecordInUseFlag = 0xFFFF
    rec.OffsetOfReferencedLowerLevelDirectoryEntity = 0
    rec.DirectoryRecordType = kind
    return rec


def dicomdir(entries: list[_Entry], charset: str = "ISO_IR 192") -> bytes:
    """A DICOMDIR for ``entries`` (PS3.3 F.3/F.5): PATIENT > STUDY > SERIES > IMAGE records."""
    tree: dict[str, dict[str, dict[str, list[_Entry]]]] = {}
    for e in entries:
        pid = str(e.ds.get("PatientID", "")) or "UNKNOWN"
        tree.setdefault(pid, {}).setdefault(str(e.ds.StudyInstanceUID), {}).setdefault(
            str(e.ds.SeriesInstanceUID), []).append(e)

    # Build the record hierarchy: (record, children) in the order they are written.
    top: list[tuple[Dataset, list[object]]] = []
    for pid, studies in tree.items():
        first = next(iter(next(iter(studies.values())).values()))[0].ds
        patient = _record("PATIENT", first, ("PatientName",))
        patient.PatientID = pid
        study_nodes: list[object] = []
        for suid, series in studies.items():
            sds = next(iter(series.values()))[0].ds
            study = _record("STUDY", sds, ("StudyDate", "StudyTime", "StudyDescription",
                                            "StudyInstanceUID", "StudyID", "AccessionNumber"))
            series_nodes: list[object] = []
            for _seuid, files in series.items():
                se = _record("SERIES", files[0].ds, ("Modality", "SeriesInstanceUID", "SeriesNumber"))
                images: list[object] = []
                for f in files:
                    img = _record("IMAGE", f.ds, ("InstanceNumber",))
                    img.ReferencedFileID = f.file_id
                    img.ReferencedSOPClassUIDInFile = f.ds.SOPClassUID
                    img.ReferencedSOPInstanceUIDInFile = f.ds.SOPInstanceUID
                    img.ReferencedTransferSyntaxUIDInFile = f.ds.file_meta.TransferSyntaxUID
                    images.append((img, []))
                series_nodes.append((se, images))
            study_nodes.append((study, series_nodes))
        top.append((patient, study_nodes))

    flat: list[tuple[Dataset, list[object], list[object]]] = []  # record, its children, its siblings

    def walk(nodes: list[object]) -> None:
        for node in nodes:
            rec, children = node  # type: ignore[misc]
            flat.append((rec, children, nodes))
            walk(children)

    walk(top)  # type: ignore[arg-type]

    root = Dataset()
    root.FileSetID = "PACS"
    root.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    root.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    root.FileSetConsistencyFlag = 0
    root.SpecificCharacterSet = charset
    root.DirectoryRecordSequence = Sequence([rec for rec, _, _ in flat])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DIRECTORY_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    root.file_meta = meta
    root.preamble = b"\0" * 128

    def write() -> bytes:
        buf = DicomBytesIO()
        root.save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    # Every offset is a fixed 4-byte UL counted from the start of the file (PS3.3 F.3.2.1), so
    # the records sit at the same places whatever the values: write once to find them, fill
    # the offsets in, write again.
    first = dcmread(io.BytesIO(write()))
    where = {id(rec): item.seq_item_tell for (rec, _, _), item in zip(flat, first.DirectoryRecordSequence)}
    for rec, children, siblings in flat:
        i = [n[0] for n in siblings].index(rec)  # type: ignore[index]
        nxt = siblings[i + 1][0] if i + 1 < len(siblings) else None  # type: ignore[index]
        rec.OffsetOfTheNextDirectoryRecord = where[id(nxt)] if nxt is not None else 0
        rec.OffsetOfReferencedLowerLevelDirectoryEntity = where[id(children[0][0])] if children else 0  # type: ignore[index]
    root.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = where[id(top[0][0])] if top else 0
    root.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = where[id(top[-1][0])] if top else 0
    return write()


def study_zip(
    instances: Iterable[bytes], *, transform: Callable[[Dataset], Dataset] | None = None,
    folder: str = "DICOM",
) -> Iterator[bytes]:
    """Yield a ZIP of ``instances`` (Part 10 bytes, one at a time) plus a DICOMDIR.

    ``transform`` may rewrite each dataset (de-identification) before it is written; without
    it the stored bytes go into the ZIP unchanged.
    """
    sink = _Sink()
    entries: list[_Entry] = []
    with zipfile.ZipFile(sink, "w", allowZip64=True, compresslevel=1) as zf:  # type: ignore[arg-type]
        for n, raw in enumerate(instances, start=1):
            ds = dcmread(io.BytesIO(raw), force=True, stop_before_pixels=transform is None)
            if transform is not None:
                ds = transform(ds)
                out = DicomBytesIO()
                ds.save_as(out, enforce_file_format=True)
                raw = out.getvalue()
                ds = dcmread(io.BytesIO(raw), stop_before_pixels=True)
            file_id = [folder, f"I{n:07d}"]
            ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
            compress = zipfile.ZIP_DEFLATED if ts in _UNCOMPRESSED else zipfile.ZIP_STORED
            info = zipfile.ZipInfo("/".join(file_id))
            info.compress_type = compress
            with zf.open(info, "w") as fh:  # type: ignore[call-arg]
                fh.write(raw)
            if "PixelData" in ds:
                del ds.PixelData
            entries.append(_Entry(file_id, ds))
            chunk = sink.take()
            if chunk:
                yield chunk
        info = zipfile.ZipInfo("DICOMDIR")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as fh:  # type: ignore[call-arg]
            fh.write(dicomdir(entries))
    yield sink.take()
