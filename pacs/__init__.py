"""mini-PACS: a DICOM archive (C-STORE/C-FIND/C-MOVE/C-GET, DICOMweb) over object storage."""

__version__ = "0.1.0"
