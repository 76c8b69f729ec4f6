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


class InvalidQuery(PacsError):
    """A query (C-FIND identifier, QIDO-RS parameters) the archive cannot run as asked.

    A malformed value (a date range like ``2026-01-01``), an unsupported level, or a
    missing unique key of a higher level in a hierarchical query (PS3.4 C.4.1.3.1).
    ``keyword`` names the offending attribute when there is one; ``structural`` is True
    when the identifier does not fit the information model (level, hierarchy) rather
    than holding a malformed value.
    """

    def __init__(self, message: str, keyword: str = "", *, structural: bool = False) -> None:
        super().__init__(message)
        self.keyword = keyword
        self.structural = structural
