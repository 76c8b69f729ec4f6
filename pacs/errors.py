"""Domain errors. The protocol edges (DIMSE, HTTP) map them to wire codes, once."""

from __future__ import annotations


class PacsError(Exception):
    """Base class of every error the archive raises on purpose."""


class InvalidInstance(PacsError):
    """The bytes are not a usable DICOM instance (unparseable, or a required UID is missing)."""


class NotFound(PacsError):
    """A study, series, instance or blob that does not exist."""


class BlobNotFound(NotFound):
    """No blob under that key in the blob store."""


class StorageUnavailable(PacsError):
    """The blob store or the index cannot be reached, or is full; retry later."""


class DuplicateConflict(PacsError):
    """The same SOP Instance UID arrived with different bytes and the policy refuses it."""


class ConfigError(PacsError):
    """A setting has a value the archive cannot use."""
