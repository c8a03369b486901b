"""The lean path's hand-made bytes equal pynetdicom's: the file meta group
written before a received data set, and the command sets of C-STORE and
C-ECHO responses, C-STORE sub-operation requests and C-FIND, C-GET and
C-MOVE responses; its command set reader agrees with pynetdicom's decoder."""

from __future__ import annotations

import io
import struct

import pytest
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)
from pynetdicom import evt
from pynetdicom.dimse_messages import (
    C_CANCEL_RQ,
    C_ECHO_RSP,
    C_FIND_RSP,
    C_GET_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    C_STORE_RSP,
)
from pynetdicom.dimse_primitives import C_CANCEL, C_ECHO, C_FIND, C_GET, C_MOVE, C_STORE
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import build_context

from ingest_svc import command_set
from ingest_svc.command_set import InvalidCommand
from ingest_svc.store import file_meta
from tests.ingest_svc.dimse_support import element, store_rq

DATA_SET = b"\x08\x00\x16\x00UI\x1a\x001.2.840.10008.5.1.4.1.1.2\x00"


def pynetdicom_part10(command: bytes, transfer_syntax: str) -> bytes:
    """What pynetdicom's C-STORE path writes for this request: its message
    decoder, then Event.encoded_dataset() (create_file_meta + pydicom's
    write_file_meta_info)."""
    pdata = P_DATA()
    pdata.presentation_data_value_list = [[1, b"\x03" + command], [1, b"\x02" + DATA_SET]]  # type: ignore[list-item]
    message = C_STORE_RQ()
    assert message.decode_msg(pdata)
    request = message.message_to_primitive()
    context = build_context(CTImageStorage, transfer_syntax)
    context.context_id = 1
    event = evt.Event(None, evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})  # type: ignore[arg-type]
    return event.encoded_dataset(include_meta=True)


@pytest.mark.parametrize(
    "sop_class,sop_instance",
    [
        (b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.3.4"),  # even and odd lengths
        (b"1.2.840.10008.5.1.4.1.1.2\x00", b"1.2.3.45\x00"),
        (b"1.2.840.10008.5.1.4.1.1.2 ", b"1.2.3.45 "),  # space padding (not the standard's, but sent)
        (b"1.2.3.4.5.6.7", b"2.25.123456789012345678901234567890123456789"),  # a private class, a long UUID UID
        (b"1.2.840.10008.5.1.4.1.1.2", b"1.2.3.4\x00\x00"),
    ],
)
@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless])
def test_file_meta_is_byte_for_byte_pynetdicoms(sop_class: bytes, sop_instance: bytes, transfer_syntax: str) -> None:
    command = store_rq(sop_class, sop_instance)
    parsed = command_set.parse(command)
    expected = pynetdicom_part10(command, transfer_syntax)
    assert expected.endswith(DATA_SET)
    assert file_meta(parsed.sop_class, parsed.sop_instance or "", transfer_syntax) == expected[: -len(DATA_SET)]


def test_an_empty_required_uid_is_refused_as_pydicom_refuses_it() -> None:
    """pynetdicom answers the exception in its handler with 0xC211, and so
    does the storage acceptor."""
    with pytest.raises(AttributeError, match="Media Storage SOP Instance UID"):
        pynetdicom_part10(store_rq(b"1.2.840.10008.5.1.4.1.1.2\x00", b""), ExplicitVRLittleEndian)
    with pytest.raises(ValueError):
        file_meta(CTImageStorage, "", ExplicitVRLittleEndian)


def encoded(primitive: object, message_class: type) -> bytes:
    message = message_class()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(1, 16384)
    ((_, data),) = pdata.presentation_data_value_list
    return bytes(data[1:])


@pytest.mark.parametrize("status", [0x0000, 0xB006, 0xA700, 0x0124, 0xC000])
def test_c_store_response_is_pynetdicoms(status: int) -> None:
    rsp = C_STORE()
    rsp.MessageID = rsp.MessageIDBeingRespondedTo = 513
    rsp.AffectedSOPClassUID, rsp.AffectedSOPInstanceUID = CTImageStorage, "1.2.3.45"
    rsp.Status = status
    mine = command_set.response(command_set.C_STORE_RSP, 513, status, CTImageStorage, "1.2.3.45")
    assert mine == encoded(rsp, C_STORE_RSP)


def test_c_echo_response_is_pynetdicoms() -> None:
    rsp = C_ECHO()
    rsp.MessageIDBeingRespondedTo = 3
    rsp.AffectedSOPClassUID = "1.2.840.10008.1.1"
    rsp.Status = 0
    assert command_set.response(command_set.C_ECHO_RSP, 3, 0, "1.2.840.10008.1.1") == encoded(rsp, C_ECHO_RSP)


def test_a_request_encoded_by_pynetdicom_is_read() -> None:
    request = C_STORE()
    request.MessageID, request.Priority = 65535, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, "1.2.3.4"
    request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = "MOVER", 9
    request.DataSet = io.BytesIO(DATA_SET)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdata = next(iter(message.encode_msg(1, 16384)))
    ((_, data),) = pdata.presentation_data_value_list
    assert command_set.parse(data[1:]) == command_set.Command(
        field=command_set.C_STORE_RQ,
        message_id=65535,
        has_data_set=True,
        sop_class=CTImageStorage,
        sop_instance="1.2.3.4",
    )


@pytest.mark.parametrize(
    "data",
    [
        store_rq(b"1.2", b"1.3")[:-3],  # cut inside a value
        store_rq(b"1.2", b"1.3")[:5],  # cut inside a header
        struct.pack("<HHI", 8, 0x16, 2) + b"1\x00",  # not group 0000
        element(0x0110, b"\x01\x00"),  # no Command Field
        element(0x0100, b"\x01"),  # a US of one byte
    ],
)
def test_unreadable_command_sets_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidCommand):
        command_set.parse(data)


# ---- the query/retrieve commands of the lean path ----------------------------------------


@pytest.mark.parametrize("originator", [None, ("MOVER", 9), ("ODDAE", 65535), ("SIXTEEN_CHARS_AE", 1)])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45"])
def test_c_store_request_is_pynetdicoms(originator: tuple[str, int] | None, sop_instance: str) -> None:
    request = C_STORE()
    request.MessageID, request.Priority = 513, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, sop_instance
    if originator is not None:
        request.MoveOriginatorApplicationEntityTitle, request.MoveOriginatorMessageID = originator
    request.DataSet = io.BytesIO(DATA_SET)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    pdata = next(iter(message.encode_msg(1, 16384)))
    ((_, data),) = pdata.presentation_data_value_list
    assert command_set.store_request(513, CTImageStorage, sop_instance, *(originator or (None, None))) == data[1:]


COUNTS = [(None, None, None, None), (3, 1, 0, 0), (None, 0, 1, 0), (0, 50, 0, 0), (7, 2, 3, 1)]


@pytest.mark.parametrize("counts", COUNTS)
@pytest.mark.parametrize(
    "status,with_data",
    [(0xFF00, False), (0x0000, False), (0xB000, True), (0xFE00, True), (0xA900, True), (0xA801, False)],
)
@pytest.mark.parametrize("kind", ["get", "move"])
def test_retrieve_responses_are_pynetdicoms(
    counts: tuple[int | None, ...], status: int, with_data: bool, kind: str
) -> None:
    primitive, message_class, field, sop_class = {
        "get": (C_GET(), C_GET_RSP, command_set.C_GET_RSP, "1.2.840.10008.5.1.4.1.2.2.3"),
        "move": (C_MOVE(), C_MOVE_RSP, command_set.C_MOVE_RSP, "1.2.840.10008.5.1.4.1.2.2.2"),
    }[kind]
    primitive.MessageID = primitive.MessageIDBeingRespondedTo = 17
    primitive.AffectedSOPClassUID, primitive.Status = sop_class, status
    for name, count in zip(("Remaining", "Completed", "Failed", "Warning"), counts, strict=False):
        if count is not None:
            setattr(primitive, f"NumberOf{name}Suboperations", count)
    if with_data:
        primitive.Identifier = io.BytesIO(b"\x08\x00\x58\x00UI\x00\x00")
    assert command_set.qr_response(field, 17, status, sop_class, with_data, counts) == pynetdicom_command(
        primitive, message_class
    )


@pytest.mark.parametrize("status,with_data", [(0xFF00, True), (0x0000, False), (0xA900, False), (0xFE00, False)])
def test_find_responses_are_pynetdicoms(status: int, with_data: bool) -> None:
    primitive = C_FIND()
    primitive.MessageID = primitive.MessageIDBeingRespondedTo = 2
    primitive.AffectedSOPClassUID, primitive.Status = "1.2.840.10008.5.1.4.1.2.1.1", status
    if with_data:
        primitive.Identifier = io.BytesIO(b"\x08\x00\x52\x00CS\x06\x00STUDY ")
    assert command_set.qr_response(
        command_set.C_FIND_RSP, 2, status, "1.2.840.10008.5.1.4.1.2.1.1", with_data
    ) == pynetdicom_command(primitive, C_FIND_RSP)


def pynetdicom_command(primitive: object, message_class: type) -> bytes:
    """The command set pynetdicom encodes for a primitive (its first PDV)."""
    message = message_class()
    message.primitive_to_message(primitive)
    pdata = next(iter(message.encode_msg(1, 16384)))
    return bytes(pdata.presentation_data_value_list[0][1][1:])


def test_requests_and_responses_encoded_by_pynetdicom_are_read() -> None:
    move = C_MOVE()
    move.MessageID, move.Priority, move.AffectedSOPClassUID = 3, 2, "1.2.840.10008.5.1.4.1.2.2.2"
    move.MoveDestination, move.Identifier = "STORESCP", io.BytesIO(b"x")
    parsed = command_set.parse(pynetdicom_command(move, C_MOVE_RQ))
    assert (parsed.field, parsed.message_id, parsed.move_destination, parsed.has_data_set) == (
        command_set.C_MOVE_RQ,
        3,
        "STORESCP",
        True,
    )
    cancel = C_CANCEL()
    cancel.MessageIDBeingRespondedTo = 3
    parsed = command_set.parse(pynetdicom_command(cancel, C_CANCEL_RQ))
    assert (parsed.field, parsed.responded_to, parsed.has_data_set) == (command_set.C_CANCEL_RQ, 3, False)
    store = C_STORE()
    store.MessageIDBeingRespondedTo, store.Status = 44, 0xB007
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = CTImageStorage, "1.2.3"
    parsed = command_set.parse(pynetdicom_command(store, C_STORE_RSP))
    assert (parsed.field, parsed.responded_to, parsed.status, parsed.message_id) == (
        command_set.C_STORE_RSP,
        44,
        0xB007,
        0,
    )
