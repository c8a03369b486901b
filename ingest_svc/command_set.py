"""DIMSE command sets of the lean path, read and written by hand (PS3.7 6.3
and E.1: group 0000, Implicit VR Little Endian), without pydicom datasets:
the requests and responses of C-ECHO, C-STORE, C-FIND, C-GET, C-MOVE and
C-CANCEL, with the elements pynetdicom puts in them, in tag order."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Command Field values (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
C_GET_RQ, C_GET_RSP = 0x0010, 0x8010
C_FIND_RQ, C_FIND_RSP = 0x0020, 0x8020
C_MOVE_RQ, C_MOVE_RSP = 0x0021, 0x8021
C_ECHO_RQ, C_ECHO_RSP = 0x0030, 0x8030
C_CANCEL_RQ = 0x0FFF
NO_DATA_SET, DATA_SET = 0x0101, 0x0001
# What pynetdicom's C-STORE sub-operations ask for (PS3.7 9.3.1.1: LOW).
LOW_PRIORITY = 0x0002

_AFFECTED_SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID, _RESPONDED_TO = 0x0002, 0x0100, 0x0110, 0x0120
_MOVE_DESTINATION, _PRIORITY, _DATA_SET_TYPE, _STATUS = 0x0600, 0x0700, 0x0800, 0x0900
_AFFECTED_SOP_INSTANCE, _REMAINING, _COMPLETED, _FAILED, _WARNING = 0x1000, 0x1020, 0x1021, 0x1022, 0x1023
_ORIGINATOR_AE, _ORIGINATOR_ID = 0x1030, 0x1031
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<HHIH")


class InvalidCommand(ValueError):
    """A command set that cannot be read, or lacks what its command needs."""


@dataclass(frozen=True, slots=True)
class Command:
    field: int
    message_id: int  # 0 in responses and C-CANCEL-RQ
    has_data_set: bool
    sop_class: str  # Affected SOP Class UID, "" when absent
    sop_instance: str | None  # Affected SOP Instance UID, None when absent
    responded_to: int = 0  # Message ID Being Responded To (responses, C-CANCEL-RQ)
    status: int | None = None  # responses
    move_destination: str = ""  # C-MOVE-RQ, as received (trailing spaces kept)


def _ui(raw: bytes) -> str:
    # As pydicom reads a UI value: trailing nulls and spaces are padding.
    return raw.decode("latin-1").rstrip("\0 ")


def _us(elements: dict[int, bytes], element: int) -> int:
    raw = elements.get(element)
    if raw is None or len(raw) != 2:
        raise InvalidCommand(f"(0000,{element:04X}) is missing or not a US value")
    return int.from_bytes(raw, "little")


def is_response(field: int) -> bool:
    return bool(field & 0x8000)


def parse(data: bytes | bytearray) -> Command:
    """The command of an encoded command set. Raises InvalidCommand."""
    elements: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < 8:
            raise InvalidCommand("the command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or length > end - pos:
            raise InvalidCommand(f"element ({group:04X},{element:04X}) does not belong in a command set")
        elements[element] = bytes(data[pos : pos + length])
        pos += length
    field = _us(elements, _COMMAND_FIELD)
    answers = is_response(field) or field == C_CANCEL_RQ
    message_id = 0 if answers else _us(elements, _MESSAGE_ID)
    responded_to = _us(elements, _RESPONDED_TO) if answers else 0
    has_data_set = _us(elements, _DATA_SET_TYPE) != NO_DATA_SET
    instance = elements.get(_AFFECTED_SOP_INSTANCE)
    destination = elements.get(_MOVE_DESTINATION)
    if field == C_MOVE_RQ and destination is None:
        raise InvalidCommand("a C-MOVE-RQ without its Move Destination")
    return Command(
        field=field,
        message_id=message_id,
        has_data_set=has_data_set,
        sop_class=_ui(elements.get(_AFFECTED_SOP_CLASS, b"")),
        sop_instance=_ui(instance) if instance is not None else None,
        responded_to=responded_to,
        status=_us(elements, _STATUS) if is_response(field) else None,
        # pydicom strips an AE value's padding only at its end (and its start).
        move_destination=destination.decode("latin-1").strip(" \0") if destination is not None else "",
    )


def _text_element(element: int, value: str, pad: bytes) -> bytes:
    raw = value.encode("latin-1")
    if len(raw) % 2:
        raw += pad
    return _ELEMENT.pack(0x0000, element, len(raw)) + raw


def _ui_element(element: int, value: str) -> bytes:
    return _text_element(element, value, b"\x00")


def _group(body: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, 0x0000, 4) + struct.pack("<I", len(body)) + body


def response(field: int, message_id: int, status: int, sop_class: str, sop_instance: str | None = None) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set, with the elements pynetdicom
    sends in them (PS3.7 9.3.1.2, 9.3.5.2)."""
    return _group(
        b"".join(
            (
                _ui_element(_AFFECTED_SOP_CLASS, sop_class),
                _US.pack(0x0000, _COMMAND_FIELD, 2, field),
                _US.pack(0x0000, _RESPONDED_TO, 2, message_id),
                _US.pack(0x0000, _DATA_SET_TYPE, 2, NO_DATA_SET),
                _US.pack(0x0000, _STATUS, 2, status),
                _ui_element(_AFFECTED_SOP_INSTANCE, sop_instance) if sop_instance is not None else b"",
            )
        )
    )


def qr_response(
    field: int,
    message_id: int,
    status: int,
    sop_class: str,
    has_data_set: bool,
    counts: tuple[int | None, int | None, int | None, int | None] = (None, None, None, None),
) -> bytes:
    """A C-FIND-RSP, C-GET-RSP or C-MOVE-RSP command set (PS3.7 9.3.2.2,
    9.3.3.2, 9.3.4.2). `counts` are the Numbers of Remaining, Completed,
    Failed and Warning Sub-operations, each left out when None."""
    parts = [
        _ui_element(_AFFECTED_SOP_CLASS, sop_class),
        _US.pack(0x0000, _COMMAND_FIELD, 2, field),
        _US.pack(0x0000, _RESPONDED_TO, 2, message_id),
        _US.pack(0x0000, _DATA_SET_TYPE, 2, DATA_SET if has_data_set else NO_DATA_SET),
        _US.pack(0x0000, _STATUS, 2, status),
    ]
    for element, count in zip((_REMAINING, _COMPLETED, _FAILED, _WARNING), counts, strict=False):
        if count is not None:
            parts.append(_US.pack(0x0000, element, 2, count))
    return _group(b"".join(parts))


def store_request(
    message_id: int,
    sop_class: str,
    sop_instance: str,
    originator_ae: str | None = None,
    originator_id: int | None = None,
    priority: int = LOW_PRIORITY,
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 9.3.1.1), as pynetdicom's
    send_c_store encodes it; the Move Originator elements for C-MOVE."""
    return _group(
        b"".join(
            (
                _ui_element(_AFFECTED_SOP_CLASS, sop_class),
                _US.pack(0x0000, _COMMAND_FIELD, 2, C_STORE_RQ),
                _US.pack(0x0000, _MESSAGE_ID, 2, message_id),
                _US.pack(0x0000, _PRIORITY, 2, priority),
                _US.pack(0x0000, _DATA_SET_TYPE, 2, DATA_SET),
                _ui_element(_AFFECTED_SOP_INSTANCE, sop_instance),
                _text_element(_ORIGINATOR_AE, originator_ae, b" ") if originator_ae is not None else b"",
                _US.pack(0x0000, _ORIGINATOR_ID, 2, originator_id) if originator_id is not None else b"",
            )
        )
    )
