"""Constants of the DICOM encoding (PS3.5) shared by the byte-level readers.

The header walks of ingest (:mod:`pacs.dicom`), rendering (:mod:`pacs.render`), ranged frame
reads (:mod:`pacs.frames`) and frame location (:mod:`pacs.pixeldata`) read the same
structures; one definition each keeps them from drifting apart.
"""

from __future__ import annotations

#: Transfer syntaxes (PS3.5 A.1, A.2, A.3, A.5).
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

#: Item, Item Delimitation Item and Sequence Delimitation Item tags (PS3.5 7.5).
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
#: Undefined length (PS3.5 7.1.1): a sequence, an item or encapsulated pixel data ends with a delimiter.
UNDEFINED_LENGTH = 0xFFFFFFFF

#: Pixel Data, and Float and Double Float Pixel Data (PS3.3 C.7.6.3).
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

#: Explicit VRs written with 2 reserved bytes and a 4-byte length (PS3.5 7.1.2, Table 7.1-1);
#: every other VR has a 2-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                      b"UT", b"UV"})
