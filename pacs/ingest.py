"""The one write path: C-STORE, ``pacs import`` (and later STOW-RS) all call :meth:`IngestService.store`.

Order matters (as in Orthanc's ``ServerContext::Store``): parse, write the blob
durably, then commit the index row; if the index refuses, delete the blob. A crash
between the two writes leaves at worst an orphan blob that ``pacs verify`` lists,
never an index row without its bytes.
"""

from __future__ import annotations

import enum
from concurrent.futures import Future, ThreadPoolExecutor
import logging
from dataclasses import dataclass

from pacs.config import DuplicatePolicy
from pacs.dicom import InstanceKeys
from pacs.errors import DuplicateConflict, InvalidInstance, StorageUnavailable
from pacs.store.blobs import BlobInfo, BlobStore, new_blob_key
from pacs.store.index import CachedMetadata, Index
from pacs.store.metadata import Entry, MetadataCache, build_entry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """Where an instance came from (kept in the index; logged, never with patient data)."""

    kind: str  # dicom, import, stow, reindex
    calling_ae: str = ""
    address: str = ""

    def __str__(self) -> str:
        parts = [self.kind]
        if self.calling_ae:
            parts.append(f"ae={self.calling_ae}")
        if self.address:
            parts.append(f"from={self.address}")
        return " ".join(parts)


class Outcome(enum.Enum):
    STORED = "stored"
    #: The same bytes were already stored: idempotent success.
    ALREADY_STORED = "already stored"
    #: Different bytes under a known SOP Instance UID; policy keep-first kept the old ones.
    KEPT_FIRST = "kept first"
    #: Different bytes; policy overwrite replaced the old ones.
    REPLACED = "replaced"


@dataclass(frozen=True)
class StoreResult:
    outcome: Outcome
    keys: InstanceKeys
    blob_key: str
    sha256: str
    size: int

    @property
    def message(self) -> str:
        if self.outcome is Outcome.KEPT_FIRST:
            return "instance already stored with different content; kept the first copy"
        if self.outcome is Outcome.REPLACED:
            return "instance already stored with different content; replaced by this copy"
        return self.outcome.value


class IngestService:
    """Store instances durably: blob first, then index; nothing half-written."""

    def __init__(
        self, blobs: BlobStore, index: Index, *, duplicate_policy: DuplicatePolicy = "keep-first",
        max_instance_size: int = 0, cache_metadata: bool = True,
    ) -> None:
        self.blobs = blobs
        self.index = index
        self.duplicate_policy = duplicate_policy
        #: 0 = no limit. Larger instances are refused as out of resources.
        self.max_instance_size = max_instance_size
        #: The WADO-RS metadata cache (derived data: see pacs/store/metadata.py); None = off.
        self.metadata = MetadataCache(index) if cache_metadata else None
        self._writer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="blob-put")

    def close(self) -> None:
        """Stop the blob-writer threads (after the writes under way)."""
        self._writer.shutdown(wait=True)

    def store(self, raw: bytes, origin: Origin) -> StoreResult:
        """Store one Part 10 instance; return only when the blob and the index row are durable.

        Raises ``InvalidInstance`` (nothing written), ``StorageUnavailable`` (nothing
        indexed) or ``DuplicateConflict`` (policy ``reject``).
        """
        if self.max_instance_size and len(raw) > self.max_instance_size:
            raise StorageUnavailable(
                f"instance of {len(raw)} bytes exceeds the limit of {self.max_instance_size} bytes"
            )
        # The blob write (hash, write, fsync: mostly outside the GIL) runs while this thread
        # parses. No index row is written before the blob is durable, and a blob nobody
        # will index (bad input, a duplicate) is deleted again. Duplicates are found by the
        # index insert itself (ON CONFLICT), so the usual case costs no extra query.
        pending = self._writer.submit(self.blobs.put, new_blob_key(), raw)
        try:
            keys = InstanceKeys.from_part10(raw)
            uid = keys.sop_instance_uid
        except BaseException:
            self._abandon(pending)
            raise
        # Built while the blob write (mostly outside the GIL) is still under way.
        entry = self._metadata_entry(raw, uid)

        blob = pending.result()  # StorageUnavailable propagates: nothing indexed
        try:
            # The cache row goes in with the instance row: one commit (one fsync) per instance.
            added = self.index.add_instance(
                keys, blob, origin=origin.kind, calling_ae=origin.calling_ae,
                metadata=None if entry is None else CachedMetadata(entry.dicom_json, entry.frames_text()),
            )
        except BaseException:
            self._discard(blob.key)
            raise
        if added.added:
            log.debug("stored %s %s (%d bytes, %s)", keys.sop_class_uid, uid, blob.size, origin)
            return StoreResult(Outcome.STORED, keys, blob.key, blob.sha256, blob.size)

        # Already indexed (a re-send, or another association won the race): keep one copy.
        existing = added.existing
        assert existing is not None
        if existing.sha256 == blob.sha256:
            self._discard(blob.key)
            log.info("instance %s already stored (%s); nothing kept", uid, origin)
            # No metadata-cache write here: the first store wrote it (or a read rebuilds it),
            # and a re-sent study must not take the index's write lock once more per instance.
            return StoreResult(Outcome.ALREADY_STORED, keys, existing.blob_key, blob.sha256, blob.size)
        return self._conflict(blob, keys, existing.blob_key, existing.sha256, origin, entry)

    def _metadata_entry(self, raw: bytes, uid: str) -> Entry | None:
        """The metadata cache entry of ``raw``; None (rebuilt on first use) if it cannot be built."""
        if self.metadata is None:
            return None
        try:
            return build_entry(raw)
        except Exception as exc:  # noqa: BLE001 - the cache is derived: never a reason to refuse
            log.warning("instance %s: no metadata cache entry: %s", uid, exc)
            return None

    def _cache(self, uid: str, blob_key: str, entry: Entry | None) -> None:
        """Write the cache entry after the index commit; a failure only costs a rebuild later."""
        if self.metadata is None or entry is None:
            return
        try:
            self.metadata.put(uid, blob_key, entry, replace=True)
        except Exception as exc:  # noqa: BLE001 - the instance is stored; the cache is rebuilt on use
            log.warning("instance %s: metadata cache not written: %s", uid, exc)

    def _conflict(
        self, blob: BlobInfo, keys: InstanceKeys, old_key: str, old_sha: str, origin: Origin,
        entry: Entry | None = None,
    ) -> StoreResult:
        """Different bytes under a known UID: the new ``blob`` is kept only by ``overwrite``."""
        uid = keys.sop_instance_uid
        if self.duplicate_policy != "overwrite":
            self._discard(blob.key)
        if self.duplicate_policy == "reject":
            log.warning("instance %s re-sent with different content (%s): rejected by policy", uid, origin)
            raise DuplicateConflict(f"SOP Instance UID {uid} is already stored with different content")
        if self.duplicate_policy == "keep-first":
            log.warning(
                "instance %s re-sent with different content (%s): kept the first copy (policy keep-first)",
                uid, origin,
            )
            return StoreResult(Outcome.KEPT_FIRST, keys, old_key, old_sha, blob.size)
        try:
            old = self.index.replace_blob(uid, blob, origin=origin.kind, calling_ae=origin.calling_ae)
        except BaseException:
            self._discard(blob.key)
            raise
        self._discard(old)
        self._cache(uid, blob.key, entry)
        log.warning("instance %s re-sent with different content (%s): replaced (policy overwrite)", uid, origin)
        return StoreResult(Outcome.REPLACED, keys, blob.key, blob.sha256, blob.size)

    def _abandon(self, pending: Future[BlobInfo]) -> BlobInfo | None:
        """Wait for a blob write nobody will index, delete what it wrote, say what it was."""
        try:
            blob = pending.result()
        except Exception:  # noqa: BLE001 - nothing was written, nothing to delete
            return None
        self._discard(blob.key)
        return blob

    def _discard(self, key: str) -> None:
        """Best-effort removal of a blob nobody indexes; ``pacs verify`` reports it if this fails."""
        try:
            self.blobs.delete(key)
        except Exception as exc:  # noqa: BLE001 - the orphan is reported later, never fatal
            log.warning("could not delete orphan blob %s: %s", key, exc)


__all__ = [
    "DuplicateConflict", "IngestService", "InvalidInstance", "Origin", "Outcome", "StoreResult",
    "StorageUnavailable",
]
