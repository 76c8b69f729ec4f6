"""Operator tools behind ``pacs import``, ``pacs verify`` and ``pacs reindex``."""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pacs.dicom import InstanceKeys
from pacs.errors import BlobNotFound, InvalidInstance, PacsError, StorageUnavailable
from pacs.ingest import IngestService, Origin, Outcome
from pacs.store.blobs import BlobInfo, BlobStore
from pacs.store.index import Index

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

#: Documentation kept next to DICOM files (README.md, SOURCES.md, LICENSE.txt): skipped in
#: a folder walk, so importing sample_dicom/ rejects nothing. Named explicitly, still tried.
NOT_DICOM_SUFFIXES = frozenset({".md", ".txt"})


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Every regular file under ``paths`` (recursive, sorted; hidden, DICOMDIR and docs skipped)."""
    for p in paths:
        path = Path(p)
        if path.is_file():
            yield path
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if (
                        not name.startswith(".") and name.upper() != "DICOMDIR"
                        and Path(name).suffix.lower() not in NOT_DICOM_SUFFIXES
                    ):
                        yield Path(dirpath) / name
        else:
            raise FileNotFoundError(f"{path}: no such file or folder")


@dataclass
class ImportReport:
    stored: int = 0
    already: int = 0
    conflicts: int = 0
    rejected: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.stored + self.already + self.conflicts + len(self.rejected)


def import_paths(
    ingest: IngestService, paths: Iterable[str | os.PathLike[str]], *,
    progress: Progress | None = None, stop_on_storage_error: bool = True,
) -> ImportReport:
    """Store every DICOM file under ``paths`` through the one ingest path (safe to re-run)."""
    report = ImportReport()
    origin = Origin("import")
    for path in iter_files(paths):
        try:
            raw = path.read_bytes()
            result = ingest.store(raw, origin)
        except InvalidInstance as exc:
            report.rejected.append((path, str(exc)))
        except StorageUnavailable as exc:
            report.rejected.append((path, f"storage unavailable: {exc}"))
            if stop_on_storage_error:
                raise
        except PacsError as exc:
            report.rejected.append((path, str(exc)))
        except OSError as exc:
            report.rejected.append((path, f"cannot read: {exc.strerror or exc}"))
        else:
            if result.outcome is Outcome.STORED:
                report.stored += 1
            elif result.outcome is Outcome.ALREADY_STORED:
                report.already += 1
            else:
                report.conflicts += 1
        if progress:
            progress(1)
    return report


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)  # (sop uid, blob key)
    corrupt: list[tuple[str, str]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def damaged(self) -> bool:
        return bool(self.missing or self.corrupt)


def _sha256_of(blobs: BlobStore, key: str) -> str:
    digest = hashlib.sha256()
    with blobs.open(key) as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def verify(index: Index, blobs: BlobStore, *, progress: Progress | None = None) -> VerifyReport:
    """Check every indexed blob exists with the right SHA-256; list blobs nobody indexes."""
    report = VerifyReport()
    indexed: set[str] = set()
    for uid, key, sha, _size in index.iter_blobs():
        indexed.add(key)
        report.checked += 1
        try:
            if _sha256_of(blobs, key) != sha:
                report.corrupt.append((uid, key))
        except BlobNotFound:
            report.missing.append((uid, key))
        if progress:
            progress(1)
    report.orphans = sorted(k for k in blobs.keys() if k not in indexed)
    return report


@dataclass
class ReindexReport:
    indexed: int = 0
    duplicates: list[str] = field(default_factory=list)  # blob keys whose UID another blob holds
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    by_origin: Counter[str] = field(default_factory=Counter)


def reindex(index: Index, blobs: BlobStore, *, progress: Progress | None = None) -> ReindexReport:
    """Rebuild the index from the blob store alone: clear it, then index every blob in place."""
    report = ReindexReport()
    index.clear()
    for key in sorted(blobs.keys()):
        try:
            raw = blobs.get(key)
            keys = InstanceKeys.from_part10(raw)
        except (InvalidInstance, BlobNotFound) as exc:
            report.unreadable.append((key, str(exc)))
            continue
        blob = BlobInfo(key=key, size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
        result = index.add_instance(keys, blob, origin="reindex")
        if result.added:
            report.indexed += 1
        else:
            report.duplicates.append(key)
        if progress:
            progress(1)
    return report
