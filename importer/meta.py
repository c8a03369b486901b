"""The Part 10 file meta information (PS3.10 7.1) at the start of a file:
enough to tell a DICOM file from anything else and to name its SOP instance
without parsing the data set (the archive parses and validates that)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PREAMBLE = 128
MAGIC = b"DICM"
# Enough for the file meta of any file met in practice; a longer one is read on.
HEAD = 16 * 1024
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # a DICOMDIR: the index of a medium

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
_SOP_CLASS, _SOP_INSTANCE, _TRANSFER_SYNTAX = 0x00020002, 0x00020003, 0x00020010


class NotDicom(ValueError):
    """Not a Part 10 file: no DICM prefix, or a file meta that does not parse."""


@dataclass(frozen=True)
class Meta:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    # Where the data set starts: at least this much of the file is needed.
    end: int


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").rstrip("\x00 ").strip()


def read_meta(head: bytes) -> Meta:
    """The file meta of a file whose first bytes are `head`; raises NotDicom,
    or NeedMore(n) when the meta runs past `head`."""
    if len(head) < PREAMBLE + 4 or head[PREAMBLE : PREAMBLE + 4] != MAGIC:
        raise NotDicom("not a DICOM file (no DICM prefix)")
    pos = PREAMBLE + 4
    values: dict[int, str] = {}
    while True:
        if pos + 8 > len(head):
            if pos == len(head):
                break  # the file is its meta alone; the archive says what it thinks of that
            raise NeedMore(pos + 8)
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(head):
                raise NeedMore(pos + 12)
            (length,) = struct.unpack_from("<L", head, pos + 8)
            start = pos + 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", head, pos + 6)
            start = pos + 8
        else:
            raise NotDicom("the file meta information is not explicit VR")
        if length == 0xFFFFFFFF:
            raise NotDicom("the file meta information has an undefined length")
        if start + length > len(head):
            raise NeedMore(start + length)
        tag = group << 16 | element
        if tag in (_SOP_CLASS, _SOP_INSTANCE, _TRANSFER_SYNTAX):
            values[tag] = _text(head[start : start + length])
        pos = start + length
    return Meta(values.get(_SOP_CLASS, ""), values.get(_SOP_INSTANCE, ""), values.get(_TRANSFER_SYNTAX, ""), pos)


class NeedMore(Exception):
    """The file meta runs past the bytes given: read at least `end` bytes."""

    def __init__(self, end: int) -> None:
        super().__init__(f"need {end} bytes")
        self.end = end
