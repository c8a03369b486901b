"""The DICOM upper layer (PS3.8) on a plain socket, without pynetdicom's DUL
and reactor threads: what the lean acceptor (ingest_svc.lean_acceptor) and
the lean C-STORE SCU of C-MOVE (ingest_svc.store_scu) share.

PDUs are read into one reusable buffer with recv_into and parsed in place;
DIMSE messages are put together from their PDVs, a data set either
collected (up to a limit) or handed on fragment by fragment as it arrives.
Messages go out as P-DATA-TF PDUs of one PDV each, as pynetdicom sends
them, no longer than the peer takes, in few large writes: a stored object's
fragments are read from its file with one preadv into a buffer that holds
their PDU headers too, and written with one send."""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from ingest_svc import command_set
from ingest_svc.command_set import InvalidCommand

log = logging.getLogger(__name__)

# PDU types (PS3.8 9.3.1).
A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07
KNOWN_PDUS = frozenset((0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07))
# A-ABORT sources and provider reasons (PS3.8 9.3.8).
SERVICE_USER, SERVICE_PROVIDER = 0x00, 0x02
UNRECOGNIZED_PDU, UNEXPECTED_PDU, INVALID_PARAMETER = 0x01, 0x02, 0x06
# Largest PDU other than P-DATA-TF and the association request (A-RELEASE,
# A-ABORT are 10 bytes; an A-ASSOCIATE-AC is read by the requestor up to this).
MAX_CONTROL_PDU = 256 * 1024
# Largest command set (a C-STORE-RQ is ~200 bytes) and collected data set
# (a C-FIND identifier is a few hundred bytes).
MAX_COMMAND = 64 * 1024
MAX_COLLECTED = 1024 * 1024
# Data bytes of a stored object read and written per round when sending it.
SEND_ROUND = 1024 * 1024
MAX_FRAGMENTS_PER_ROUND = 512
# The fragment size when the peer sets no maximum length (0).
UNLIMITED_FRAGMENT = 4 * 1024 * 1024

HEADER = struct.Struct(">BxI")
PDV_HEADER = struct.Struct(">IBB")
_FRAGMENT_HEADER = struct.Struct(">BxIIBB")  # a P-DATA-TF header and its one PDV's
RELEASE_RQ_PDU = HEADER.pack(A_RELEASE_RQ, 4) + bytes(4)
RELEASE_RP_PDU = HEADER.pack(A_RELEASE_RP, 4) + bytes(4)


def abort_pdu(source: int, reason: int = 0) -> bytes:
    return HEADER.pack(A_ABORT, 4) + bytes((0, 0, source, reason))


class Dropped(Exception):
    """The connection ended or must end: nothing more to send on it."""


class ReleaseRequested(Exception):
    """The peer sent A-RELEASE-RQ (not yet answered)."""


class NotSent(OSError):
    """A stored object's file could not be read before anything of its
    message was sent: the association goes on."""


class CutShort(OSError):
    """A stored object's file could not be read to its end after its message
    began: the message cannot be finished (the association is aborted)."""


@dataclass(eq=False, slots=True)
class Message:
    """A DIMSE message being received: its command set, then its data set,
    collected in `data` or handed to `sink` fragment by fragment."""

    context_id: int
    command_bytes: bytearray
    command: command_set.Command | None = None
    data: bytearray | None = None
    sink: Callable[[memoryview], None] | None = None
    state: Any = None  # what the receiver keeps with the message (a staged object)


@dataclass(eq=False, slots=True)
class FileMessage:
    """A message whose data set is read from a file, being sent: its command
    PDU, and the round of data fragments (PDU headers and all) read last."""

    context_id: int
    fd: int
    offset: int
    length: int
    head: bytes
    buffer: int  # which of the connection's two send buffers holds the round
    filled: int = 0  # bytes of the round in the buffer
    done: int = 0  # data bytes read so far


class Connection:
    """One upper-layer connection, served by the thread that owns it
    (close_from_elsewhere() comes from another). `max_pdu` is the Maximum
    Length we offered (longer P-DATA-TF PDUs are refused; 0: none),
    `peer_max` the one the peer offered (our PDUs are no longer; 0: none)."""

    def __init__(self, sock: socket.socket, buffer_size: int, max_pdu: int, source: str) -> None:
        self.sock = sock
        self.source = source
        self.max_pdu = max_pdu
        self.peer_max = 0
        self.established = False
        self._closing = False
        self._send_lock = threading.Lock()
        self._buf = bytearray(buffer_size)
        self._view = memoryview(self._buf)
        self._pos = self._end = 0
        self._pdu_left = 0  # bytes of the current P-DATA-TF not yet parsed
        self._message: Message | None = None  # the one being received
        self._poll: select.poll | None = None
        # The two send buffers of stored objects: one sent, the next one read.
        self._out = [bytearray(), bytearray()]
        self._turn = 0

    # -- hooks

    def accepts_context(self, context_id: int) -> bool:
        """Whether a message may use this presentation context."""
        return True

    def command_received(self, message: Message) -> None:
        """The command set of `message` is complete (message.command); set
        message.sink to take its data set as it arrives instead of collecting it."""

    # -- receiving

    def receive(self, timeout: float | None = None) -> Message:
        """The next complete message, waiting at most `timeout` seconds
        between reads (default: the socket's timeout, the network timeout).
        Raises ReleaseRequested, TimeoutError, and Dropped when the peer
        aborts or leaves, or after aborting an invalid stream."""
        if timeout is None:
            return self._receive()
        before = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return self._receive()
        finally:
            self.sock.settimeout(before)

    def _receive(self) -> Message:
        while True:
            if not self._pdu_left:
                self._fill(6)
                pdu_type, length = HEADER.unpack_from(self._buf, self._pos)
                self._pos += 6
                if pdu_type != P_DATA_TF:
                    self._control_pdu(pdu_type, length)
                    continue
                if self.max_pdu and length > self.max_pdu:
                    log.warning(
                        "a DIMSE peer sent a PDU of %d bytes, more than the %d allowed; aborting", length, self.max_pdu
                    )
                    self.send_abort(SERVICE_PROVIDER, INVALID_PARAMETER)
                    raise Dropped
                if length == 0:
                    continue
                self._pdu_left = length
            message = self._pdv()
            if message is not None:
                return message

    def await_response(self, field: int, message_id: int, timeout: float) -> command_set.Command:
        """The response `field` to our message `message_id`, waiting at most
        `timeout` seconds between reads; other messages that come first go
        to interim()."""
        while True:
            message = self.receive(timeout)
            command = message.command
            assert command is not None
            if command.field == field and command.responded_to == message_id:
                return command
            self.interim(message)

    def interim(self, message: Message) -> None:
        """A message that came while a response was awaited: not expected
        unless a subclass says so (the association is aborted)."""
        assert message.command is not None
        self.invalid(f"an unexpected message (command 0x{message.command.field:04X})")

    def readable(self) -> bool:
        """Whether something from the peer waits to be read (or the peer has
        gone), without blocking."""
        if self._pdu_left or self._end > self._pos:
            return True
        if self._poll is None:
            self._poll = select.poll()
            self._poll.register(self.sock, select.POLLIN)
        return bool(self._poll.poll(0))

    def _control_pdu(self, pdu_type: int, length: int) -> None:
        """A PDU other than P-DATA-TF: raises, or returns to read on."""
        if length > MAX_CONTROL_PDU:
            log.warning("a DIMSE peer sent a control PDU of %d bytes; aborting", length)
            self.send_abort(SERVICE_PROVIDER, INVALID_PARAMETER)
            raise Dropped
        self._skip(length)
        if pdu_type == A_RELEASE_RQ:
            if self._message is not None:
                log.warning("%s released the association in the middle of a message", self.source)
            raise ReleaseRequested
        if pdu_type == A_ABORT:
            log.info("%s aborted the association", self.source)
            self.established = False
            raise Dropped
        self.unexpected_pdu(pdu_type)

    def unexpected_pdu(self, pdu_type: int) -> None:
        self.send_abort(SERVICE_PROVIDER, UNEXPECTED_PDU if pdu_type in KNOWN_PDUS else UNRECOGNIZED_PDU)
        raise Dropped

    def _pdv(self) -> Message | None:
        """One PDV of the current P-DATA-TF; the message it completes, if one."""
        if self._pdu_left < 6:
            self.invalid("a PDV header is cut short")
        self._fill(6)
        item_length, context_id, header = PDV_HEADER.unpack_from(self._buf, self._pos)
        self._pos += 6
        if item_length < 2 or item_length + 4 > self._pdu_left:
            self.invalid("a PDV does not fit its PDU")
        self._pdu_left -= item_length + 4
        size = item_length - 2
        is_command, last = header & 0x01, header & 0x02
        message = self._message
        if message is None:
            if not is_command:
                self.invalid("a data set fragment without its command")
            if not self.accepts_context(context_id):
                self.invalid(f"presentation context {context_id} was not accepted")
            message = self._message = Message(context_id, bytearray())
        elif context_id != message.context_id:
            self.invalid("a message changed presentation context")
        if is_command:
            if message.command is not None:
                self.invalid("a command fragment inside a data set")
            if len(message.command_bytes) + size > MAX_COMMAND:
                self.invalid("the command set is too long")
            self._stream(size, message.command_bytes.extend)
            if not last:
                return None
            try:
                message.command = command_set.parse(message.command_bytes)
            except InvalidCommand as exc:
                self.invalid(f"an unreadable command set: {exc}")
            if not message.command.has_data_set:
                self._message = None
                return message
            self.command_received(message)
            if message.sink is None:
                message.data = bytearray()
            return None
        if message.command is None:
            self.invalid("a data set fragment before the command set ends")
        if message.sink is not None:
            self._stream(size, message.sink)
        else:
            assert message.data is not None
            if len(message.data) + size > MAX_COLLECTED:
                self.invalid("the data set is too long")
            self._stream(size, message.data.extend)
        if not last:
            return None
        self._message = None
        return message

    def _fill(self, n: int) -> None:
        """At least `n` bytes (n <= the buffer) from _pos in the buffer."""
        if self._end - self._pos >= n:
            return
        if self._pos + n > len(self._buf):
            rest = self._end - self._pos
            self._buf[:rest] = self._buf[self._pos : self._end]
            self._pos, self._end = 0, rest
        while self._end - self._pos < n:
            got = self.sock.recv_into(self._view[self._end :])
            if not got:
                raise Dropped
            self._end += got

    def _stream(self, n: int, sink: Callable[[memoryview], Any]) -> None:
        """Hands the next `n` bytes to `sink` as views of the buffer, as they
        arrive: a data set is never held whole."""
        while n:
            if self._pos == self._end:
                got = self.sock.recv_into(self._view)
                if not got:
                    raise Dropped
                self._pos, self._end = 0, got
            k = min(n, self._end - self._pos)
            sink(self._view[self._pos : self._pos + k])
            self._pos += k
            n -= k

    def _skip(self, n: int) -> None:
        self._stream(n, _ignore)

    def take_partial(self) -> Message | None:
        """The message left half received (the connection ended in it)."""
        message, self._message = self._message, None
        return message

    # -- sending

    def send(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_lock:
            self.sock.sendall(data)

    def _fragment(self) -> int:
        return max(self.peer_max - 6, 1) if self.peer_max else UNLIMITED_FRAGMENT

    def message_pdus(self, context_id: int, command: bytes, data_set: bytes | None = None) -> bytes:
        """A message as P-DATA-TF PDUs no longer than the peer takes."""
        step = self._fragment()
        pdus = []
        for is_command, data in ((True, command), (False, data_set)):
            if data is None:
                continue
            flag = 0x01 if is_command else 0x00
            for start in range(0, max(len(data), 1), step):
                fragment = data[start : start + step]
                last = 0x02 if start + step >= len(data) else 0x00
                pdus.append(
                    _FRAGMENT_HEADER.pack(P_DATA_TF, len(fragment) + 6, len(fragment) + 2, context_id, flag | last)
                    + fragment
                )
        return b"".join(pdus)

    def send_message(self, context_id: int, command: bytes, data_set: bytes | None = None) -> None:
        self.send(self.message_pdus(context_id, command, data_set))

    def prepare_file_message(self, context_id: int, command: bytes, fd: int, offset: int, length: int) -> FileMessage:
        """A message whose data set is `length` bytes of a file from
        `offset`, its command and first SEND_ROUND bytes of fragments read
        now (into the one of two buffers the previous message did not use),
        so that it can be read while another message's response is awaited.
        Raises NotSent when the file cannot be read."""
        self._turn ^= 1
        message = FileMessage(context_id, fd, offset, length, self.message_pdus(context_id, command), self._turn)
        self._read_round(message)
        return message

    def send_prepared(self, message: FileMessage, prefix: bytes = b"") -> None:
        """Sends a prepared message, after `prefix` and in the same write as
        its first round; the rest in rounds of SEND_ROUND bytes, each read
        then written. Raises CutShort (after aborting the association) when
        the file cannot be read to its end."""
        out = memoryview(self._out[message.buffer])
        with self._send_lock:
            self._sendall_parts([prefix, message.head, out[: message.filled]])
        while message.done < message.length:
            try:
                self._read_round(message)
            except NotSent as exc:
                self.send_abort(SERVICE_USER)
                raise CutShort(str(exc)) from None
            self.send(out[: message.filled])

    def send_file_message(self, context_id: int, command: bytes, fd: int, offset: int, length: int) -> None:
        self.send_prepared(self.prepare_file_message(context_id, command, fd, offset, length))

    def _read_round(self, message: FileMessage) -> None:
        """The next round of a message's fragments, with their PDU headers,
        into its buffer (NotSent when the file cannot be read)."""
        step = self._fragment()
        # preadv takes at most IOV_MAX (1024) buffers: a peer with a tiny
        # maximum length gets smaller rounds.
        per_round = min(max(1, SEND_ROUND // step), MAX_FRAGMENTS_PER_ROUND)
        size = per_round * (min(step, message.length) + 12) if message.length else 12
        if len(self._out[message.buffer]) < size:
            self._out[message.buffer] = bytearray(size)
        out = memoryview(self._out[message.buffer])
        done, length = message.done, message.length
        end = min(length, done + per_round * step)
        slots, pos = [], 0
        for start in range(done, end, step):
            n = min(step, end - start)
            _FRAGMENT_HEADER.pack_into(
                out, pos, P_DATA_TF, n + 6, n + 2, message.context_id, 0x02 if start + n == length else 0x00
            )
            slots.append(out[pos + 12 : pos + 12 + n])
            pos += 12 + n
        if not length:  # an empty data set: one empty last fragment
            _FRAGMENT_HEADER.pack_into(out, 0, P_DATA_TF, 6, 2, message.context_id, 0x02)
            pos = 12
        try:
            if _preadv_all(message.fd, slots, message.offset + done) != end - done:
                raise NotSent("the object's file is shorter than it was")
        except NotSent:
            raise
        except OSError as exc:
            raise NotSent(exc.strerror or str(exc)) from None
        message.filled, message.done = pos, end

    def _sendall_parts(self, parts: list[bytes | memoryview]) -> None:
        """sendall of several buffers in as few sendmsg calls as they take (holds _send_lock)."""
        views = [memoryview(p) for p in parts if len(p)]
        while views:
            sent = self.sock.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def send_abort(self, source: int = SERVICE_USER, reason: int = 0) -> None:
        """Sends A-ABORT (errors ignored) and marks the association over."""
        try:
            # Not for ever: another thread may be blocked sending to a peer that stopped reading.
            if self._send_lock.acquire(timeout=1.0):
                try:
                    self.sock.sendall(abort_pdu(source, reason))
                finally:
                    self._send_lock.release()
        except OSError:
            pass
        self.established = False

    def invalid(self, what: str) -> NoReturn:
        log.warning("%s: %s; aborting the association", self.source, what)
        self.send_abort(SERVICE_PROVIDER, INVALID_PARAMETER)
        raise Dropped

    def close_from_elsewhere(self) -> None:
        """From another thread (DimseServer.stop): aborts the association
        and wakes the thread serving it, which then cleans up."""
        self._closing = True
        try:
            # Not held up by a peer that stopped reading (or the other thread
            # blocked sending to it): the socket is shut down next anyway.
            self.sock.settimeout(1.0)
            if self.established:
                self.send_abort(SERVICE_USER)
        except OSError:
            pass
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _preadv_all(fd: int, slots: list[memoryview], offset: int) -> int:
    """Fills `slots` from the file at `offset`; the bytes read (fewer only at its end)."""
    total = 0
    while slots:
        got = os.preadv(fd, slots, offset + total)
        if got <= 0:
            break
        total += got
        while slots and got >= len(slots[0]):
            got -= len(slots[0])
            slots = slots[1:]
        if slots and got:
            slots = [slots[0][got:], *slots[1:]]
    return total


def _ignore(_: memoryview) -> None:
    pass
