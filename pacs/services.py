"""Wire settings to the blob store, the index and the ingest service (one set per process)."""

from __future__ import annotations

from dataclasses import dataclass

from pacs.config import Settings
from pacs.ingest import IngestService
from pacs.store.blobs import BlobStore, FilesystemBlobStore
from pacs.store.index import Index
from pacs.store.shares import Shares


def open_blob_store(settings: Settings) -> BlobStore:
    """The configured blob store (``minio`` is imported only when it is used)."""
    if settings.blob_backend == "minio":
        from pacs.store.minio_blobs import MinioBlobStore

        return MinioBlobStore.from_settings(settings)
    return FilesystemBlobStore(settings.resolved_blob_dir, fsync=settings.fsync)


def open_index(settings: Settings) -> Index:
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Index(settings.resolved_database_url, fsync=settings.fsync)


def open_shares(settings: Settings, index: Index) -> Shares:
    """Shared study links, with the configured expiry limits (all state in the index database)."""
    return Shares(index, default_days=settings.share_default_days, max_days=settings.share_max_days)


@dataclass
class Services:
    settings: Settings
    blobs: BlobStore
    index: Index
    ingest: IngestService

    def close(self) -> None:
        self.ingest.close()
        self.index.dispose()


def build_services(settings: Settings, *, migrate: bool = False) -> Services:
    """Open the stores; with ``migrate`` also bring the schema up to date and create the bucket."""
    blobs = open_blob_store(settings)
    index = open_index(settings)
    if migrate:
        blobs.ping()
        index.migrate()
    ingest = IngestService(
        blobs, index, duplicate_policy=settings.duplicate_policy,
        max_instance_size=settings.max_instance_mb * 1024 * 1024,
    )
    return Services(settings, blobs, index, ingest)
