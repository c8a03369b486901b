"""A streaming multipart parser (RFC 2046 5.1, used by RFC 2387 multipart/related).

It is push-based and does no I/O of its own: feed() it body chunks as they
arrive and it returns the parts completed so far. Part bodies go straight into
the files the caller's factory makes (STOW-RS: staged objects in the blob
store), else SpooledTemporaryFiles, so a multi-GB upload never sits in memory; the parser
itself keeps at most one delimiter length (plus one part's header block) of
unconsumed bytes.

Limits a caller sets (each breach raises a MultipartError whose `status` is
the HTTP answer): bytes per part and parts per body (413), bytes of one part's
header block (400), and no part may itself be multipart/* (415)."""

from __future__ import annotations

import enum
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import IO, Protocol

# A part's header block larger than this is an attack or garbage, not MIME.
MAX_HEADER_BYTES = 16 * 1024
# RFC 2046: 1 to 70 characters.
MAX_BOUNDARY = 70
# RFC 2046 5.1.1 bchars: a boundary is made of these (space never last).
_BCHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")


class MultipartError(ValueError):
    """The body is not well-formed multipart; the message says how."""

    status = 400


class LimitExceeded(MultipartError):
    """The body is larger than a configured limit allows."""

    status = 413


class NestedMultipart(MultipartError):
    """A part is itself a multipart body: not something we store."""

    status = 415


class PartFile(Protocol):
    """What a part's body goes into: a file, or a staged object of the blob
    store (common.blobs.StagedObject), which writes, seeks and closes like one."""

    def write(self, data: bytes | bytearray, /) -> object: ...

    def seek(self, offset: int, /) -> object: ...

    def close(self) -> None: ...


@dataclass
class Part:
    # Header names lower-cased; values as sent (decoded as Latin-1).
    headers: dict[str, str]
    file: PartFile
    size: int = 0
    _closed: bool = field(default=False, repr=False)

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.file.close()

    def detach(self) -> PartFile:
        """Hands the body's file to the caller, who then closes it."""
        self._closed = True
        return self.file

    def __enter__(self) -> Part:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def spool(max_memory: int) -> IO[bytes]:
    """A file that lives in RAM up to `max_memory` bytes, then on disk."""
    f = tempfile.SpooledTemporaryFile(max_size=max_memory)
    if max_memory <= 0:
        # max_size=0 would mean "never spill"; 0 here means "always on disk".
        f.rollover()
    return f


def check_boundary(boundary: str | None) -> bytes:
    if not boundary:
        raise MultipartError("the Content-Type has no boundary parameter")
    if len(boundary) > MAX_BOUNDARY or boundary.endswith(" "):
        raise MultipartError("the boundary must be 1-70 characters and not end with a space")
    try:
        raw = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise MultipartError("the boundary must be ASCII") from None
    if not set(raw) <= _BCHARS:
        raise MultipartError("the boundary may contain only letters, digits, spaces and '()+_,-./:=?")
    return raw


class _State(enum.Enum):
    PREAMBLE = enum.auto()
    AFTER_DELIMITER = enum.auto()  # just read "--boundary": "--", or padding + CRLF
    HEADERS = enum.auto()
    BODY = enum.auto()
    EPILOGUE = enum.auto()


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    last: str | None = None
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last is not None:  # obsolete line folding
            headers[last] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or " " in name:
            raise MultipartError(f"malformed part header line '{line[:60]}'")
        headers[name] = value.strip()
        last = name
    return headers


@dataclass(frozen=True)
class Limits:
    """What one body may hold; None: unlimited."""

    max_part_bytes: int | None = None
    max_parts: int | None = None
    max_header_bytes: int = MAX_HEADER_BYTES


class MultipartParser:
    def __init__(
        self,
        boundary: bytes,
        spool_max_memory: int,
        limits: Limits = Limits(),
        *,
        new_file: Callable[[], PartFile] | None = None,
    ) -> None:
        """Part bodies go into files from `new_file`, else into spools that
        stay in memory up to `spool_max_memory` bytes."""
        # Every delimiter but the first is preceded by CRLF; pretending the
        # body starts with CRLF makes the first one look like the rest.
        self._delimiter = b"\r\n--" + boundary
        self._spool_max_memory = spool_max_memory
        self._new_file = new_file
        self._limits = limits
        self._buf = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self._part: Part | None = None
        self._parts_seen = 0
        # An error met after some parts of the same chunk were complete: raised
        # on the next call, so that those parts are handed out first whatever
        # the chunking.
        self._error: MultipartError | None = None

    @property
    def parts_seen(self) -> int:
        return self._parts_seen

    def feed(self, data: bytes) -> list[Part]:
        """Consumes a chunk; returns the parts it completed (caller closes them)."""
        if self._error is not None:
            raise self._error
        if self._state is _State.EPILOGUE:
            return []  # the epilogue is ignored, however long
        self._buf += data
        done: list[Part] = []
        try:
            while self._step(done):
                pass
        except MultipartError as exc:
            if not done:
                raise
            self._error = exc
            self.abort()
            self._buf.clear()
        except BaseException:
            for part in done:
                part.close()
            raise
        return done

    def close(self) -> None:
        """Call at the end of the body; raises unless the closing delimiter was seen."""
        if self._error is not None:
            raise self._error
        if self._state is _State.EPILOGUE:
            return
        self.abort()
        if self._parts_seen == 0 and self._state in (_State.PREAMBLE, _State.AFTER_DELIMITER):
            raise MultipartError("the body does not contain the boundary given in the Content-Type")
        raise MultipartError("the body ended before the closing boundary delimiter")

    def abort(self) -> None:
        """Releases the part being received, if any."""
        if self._part is not None:
            self._part.close()
            self._part = None

    def _step(self, done: list[Part]) -> bool:
        """Makes one transition if the buffer allows; False when it needs more data."""
        buf, delim = self._buf, self._delimiter
        if self._state is _State.PREAMBLE:
            idx = buf.find(delim)
            if idx < 0:
                del buf[: max(0, len(buf) - len(delim) + 1)]
                return False
            del buf[: idx + len(delim)]
            self._state = _State.AFTER_DELIMITER
            return True
        if self._state is _State.AFTER_DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._headers()
        if self._state is _State.BODY:
            return self._body(done)
        buf.clear()  # EPILOGUE
        return False

    def _after_delimiter(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self._state = _State.EPILOGUE
            buf.clear()
            return False
        # Transport padding (spaces/tabs) may precede the CRLF.
        i = 0
        while i < len(buf) and buf[i] in b" \t":
            i += 1
            if i > 256:
                raise MultipartError("too much whitespace after a boundary delimiter")
        if len(buf) - i < 2:
            return False
        if buf[i : i + 2] != b"\r\n":
            raise MultipartError("a boundary delimiter is not followed by CRLF")
        max_parts = self._limits.max_parts
        if max_parts is not None and self._parts_seen >= max_parts:
            raise LimitExceeded(f"the body has more than {max_parts} parts")
        del buf[: i + 2]
        self._state = _State.HEADERS
        return True

    def _headers(self) -> bool:
        buf = self._buf
        max_header = self._limits.max_header_bytes
        if buf[:2] == b"\r\n":  # a part with no headers at all
            end, skip = 0, 2
        else:
            end = buf.find(b"\r\n\r\n")
            skip = 4
            if end < 0:
                if len(buf) > max_header:
                    raise MultipartError(f"a part's headers exceed {max_header} bytes")
                return False
        if end > max_header:
            raise MultipartError(f"a part's headers exceed {max_header} bytes")
        headers = _parse_headers(bytes(buf[:end]))
        ctype = headers.get("content-type", "")
        if ctype.strip().lower().startswith("multipart/"):
            raise NestedMultipart(
                f"part {self._parts_seen + 1} is itself '{ctype[:60]}'; nested multipart is not supported"
            )
        del buf[: end + skip]
        self._part = Part(headers, self._new_file() if self._new_file else spool(self._spool_max_memory))
        self._state = _State.BODY
        return True

    def _grow(self, part: Part, n: int) -> None:
        limit = self._limits.max_part_bytes
        if limit is not None and part.size + n > limit:
            raise LimitExceeded(f"part {self._parts_seen + 1} is larger than {limit} bytes")

    def _body(self, done: list[Part]) -> bool:
        buf, delim, part = self._buf, self._delimiter, self._part
        assert part is not None
        idx = buf.find(delim)
        if idx < 0:
            # Keep a tail that could be the start of a delimiter split across chunks.
            safe = len(buf) - len(delim) + 1
            if safe > 0:
                self._grow(part, safe)
                part.file.write(buf[:safe])
                part.size += safe
                del buf[:safe]
            return False
        self._grow(part, idx)
        part.file.write(buf[:idx])
        part.size += idx
        part.file.seek(0)
        del buf[: idx + len(delim)]
        done.append(part)
        self._part = None
        self._parts_seen += 1
        self._state = _State.AFTER_DELIMITER
        return True


async def iter_parts(
    chunks: AsyncIterable[bytes],
    boundary: bytes,
    spool_max_memory: int,
    limits: Limits = Limits(),
    *,
    new_file: Callable[[], PartFile] | None = None,
) -> AsyncGenerator[Part, None]:
    """Yields each part as soon as its closing delimiter has streamed in.

    The consumer owns each yielded part and must close it."""
    parser = MultipartParser(boundary, spool_max_memory, limits, new_file=new_file)
    pending: list[Part] = []
    try:
        async for chunk in chunks:
            pending = parser.feed(chunk)
            while pending:
                yield pending.pop(0)
        parser.close()
    finally:
        for part in pending:
            part.close()
        parser.abort()
