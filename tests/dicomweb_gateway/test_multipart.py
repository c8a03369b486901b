from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable

import pytest

from dicomweb_gateway.multipart import (
    MAX_HEADER_BYTES,
    LimitExceeded,
    Limits,
    MultipartError,
    MultipartParser,
    NestedMultipart,
    Part,
    check_boundary,
    iter_parts,
)

BOUNDARY = b"b0undary-42"


def body(parts: Iterable[tuple[dict[str, str], bytes]], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = bytearray(preamble)
    for headers, data in parts:
        out += b"\r\n--" + BOUNDARY + b"\r\n" if out else b"--" + BOUNDARY + b"\r\n"
        for name, value in headers.items():
            out += f"{name}: {value}\r\n".encode("latin-1")
        out += b"\r\n" + data
    out += b"\r\n--" + BOUNDARY + b"--" + epilogue
    return bytes(out)


def parse(data: bytes, chunk_size: int, spool: int = 1024) -> list[tuple[dict[str, str], bytes]]:
    parser = MultipartParser(BOUNDARY, spool)
    got: list[tuple[dict[str, str], bytes]] = []

    def collect(parts: list[Part]) -> None:
        for part in parts:
            with part:
                content = part.file.read()
                assert len(content) == part.size
                got.append((part.headers, content))

    for i in range(0, len(data), chunk_size):
        collect(parser.feed(data[i : i + chunk_size]))
    parser.close()
    return got


# Binary payloads that look like delimiter fragments are the hard cases.
PAYLOADS = [
    b"",
    b"x",
    b"\r\n",
    b"\r\n--",
    b"\r\n--" + BOUNDARY[:-1],
    b"--" + BOUNDARY,  # not at a line start: plain data
    b"\r" * 50 + b"\n--b0und",
    os.urandom(5000),
]


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 16, 17, 64, 1000, 1 << 20])
def test_round_trip_in_awkward_chunks(chunk_size: int) -> None:
    parts = [({"Content-Type": "application/dicom"}, p) for p in PAYLOADS]
    got = parse(body(parts), chunk_size)
    assert [data for _, data in got] == PAYLOADS
    assert all(h == {"content-type": "application/dicom"} for h, _ in got)


@pytest.mark.parametrize("split", range(1, 40))
def test_boundary_split_at_every_position(split: int) -> None:
    data = body([({"Content-Type": "application/dicom"}, b"A" * 20), ({}, b"B" * 20)])
    parser = MultipartParser(BOUNDARY, 1024)
    parts = parser.feed(data[:split]) + parser.feed(data[split:])
    parser.close()
    assert [p.file.read() for p in parts] == [b"A" * 20, b"B" * 20]
    assert parts[1].headers == {}


def test_preamble_and_epilogue_are_ignored() -> None:
    data = body(
        [({"Content-Type": "application/dicom"}, b"payload")],
        preamble=b"This is a preamble.\r\nIt mentions --b0undary-4 but not quite.",
        epilogue=b"\r\nepilogue with \r\n--" + BOUNDARY + b"\r\n junk",
    )
    assert parse(data, 5) == [({"content-type": "application/dicom"}, b"payload")]


def test_header_details() -> None:
    raw = (
        b"--" + BOUNDARY + b"  \t\r\n"  # transport padding after the delimiter
        b"Content-Type: application/dicom;\r\n transfer-syntax=1.2.840.10008.1.2.1\r\n"  # folded
        b"CONTENT-LOCATION:  x \r\n\r\n"
        b"data\r\n--" + BOUNDARY + b"--\r\n"
    )
    ((headers, data),) = parse(raw, 3)
    assert headers == {
        "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
        "content-location": "x",
    }
    assert data == b"data"


def test_large_part_spills_to_disk() -> None:
    payload = os.urandom(300_000)
    parser = MultipartParser(BOUNDARY, spool_max_memory=1000)
    data = body([({}, payload)])
    parts: list[Part] = []
    for i in range(0, len(data), 65536):
        parts += parser.feed(data[i : i + 65536])
    parser.close()
    (part,) = parts
    assert part.file._rolled  # type: ignore[attr-defined]
    assert part.file.read() == payload
    part.close()


def test_spool_zero_means_always_on_disk() -> None:
    parser = MultipartParser(BOUNDARY, spool_max_memory=0)
    (part,) = parser.feed(body([({}, b"tiny")]))
    assert part.file._rolled  # type: ignore[attr-defined]
    assert part.file.read() == b"tiny"


def test_no_parts_at_all() -> None:
    assert parse(b"--" + BOUNDARY + b"--", 1) == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "does not contain the boundary"),
        (b"no boundary anywhere in here", "does not contain the boundary"),
        (b"--other\r\n\r\nx\r\n--other--", "does not contain the boundary"),
        (b"--" + BOUNDARY + b"\r\n\r\ntruncated", "ended before the closing"),
        (b"--" + BOUNDARY + b"\r\nContent-Type: a", "ended before the closing"),
        (b"--" + BOUNDARY + b"\r\n\r\nx\r\n--" + BOUNDARY + b"\r\n", "ended before the closing"),
        (b"--" + BOUNDARY + b"X\r\n\r\nx\r\n--" + BOUNDARY + b"--", "not followed by CRLF"),
        (b"--" + BOUNDARY + b"\r\nbad header line\r\n\r\nx\r\n--" + BOUNDARY + b"--", "malformed part header"),
    ],
)
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(MultipartError, match=message):
        parse(data, 2)


def test_oversized_headers() -> None:
    data = b"--" + BOUNDARY + b"\r\nX-Long: " + b"a" * (MAX_HEADER_BYTES + 10)
    with pytest.raises(MultipartError, match="headers exceed"):
        parse(data, 4096)


@pytest.mark.parametrize("boundary", [None, "", "x" * 71, "trailing ", "bøundary"])
def test_bad_boundary_parameter(boundary: str | None) -> None:
    with pytest.raises(MultipartError):
        check_boundary(boundary)


def test_iter_parts_yields_while_streaming() -> None:
    """The first part is available before the body has finished arriving."""
    events: list[str] = []
    data = body([({}, b"one"), ({}, b"two")])
    cut = data.index(b"two") - 2  # just after the first part's closing delimiter

    async def chunks() -> AsyncIterator[bytes]:
        events.append("chunk1")
        yield data[:cut]
        events.append("chunk2")
        yield data[cut:]

    async def run() -> list[bytes]:
        out = []
        async for part in iter_parts(chunks(), BOUNDARY, 1024):
            with part:
                events.append("part")
                out.append(part.file.read())
        return out

    assert asyncio.run(run()) == [b"one", b"two"]
    assert events == ["chunk1", "part", "chunk2", "part"]


def test_iter_parts_raises_on_truncation_and_closes_parts() -> None:
    data = body([({}, b"one"), ({}, b"two")])[:-20]

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    async def run() -> list[bytes]:
        out = []
        async for part in iter_parts(chunks(), BOUNDARY, 1024):
            with part:
                out.append(part.file.read())
        return out

    with pytest.raises(MultipartError, match="ended before"):
        asyncio.run(run())


def test_memory_stays_bounded_for_a_large_body() -> None:
    """A 32 MiB part streamed in 64 KiB chunks never sits in memory."""
    import tracemalloc

    block = os.urandom(65536)
    size = 32 * 1024 * 1024

    async def chunks() -> AsyncIterator[bytes]:
        yield b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n"
        for _ in range(size // len(block)):
            yield block
        yield b"\r\n--" + BOUNDARY + b"--\r\n"

    async def run() -> int:
        total = 0
        async for part in iter_parts(chunks(), BOUNDARY, 1024 * 1024):
            with part:
                total += part.size
        return total

    tracemalloc.start()
    try:
        assert asyncio.run(run()) == size
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024


# ---- found by python -m bench.mutation: behaviour only the HTTP tests covered -----


def test_a_header_name_with_a_space_is_malformed() -> None:
    data = body([({"Bad Name": "x"}, b"data")])
    with pytest.raises(MultipartError, match="malformed part header line 'Bad Name: x'"):
        parse(data, 7)


@pytest.mark.parametrize("ctype", ["multipart/related; boundary=inner", " Multipart/Mixed; boundary=x"])
def test_a_nested_multipart_part_is_refused_with_415(ctype: str) -> None:
    data = body([({"Content-Type": "application/dicom"}, b"one"), ({"Content-Type": ctype}, b"two")])
    with pytest.raises(NestedMultipart) as refused:
        parse(data, 5)
    assert refused.value.status == 415
    assert str(refused.value).startswith(f"part 2 is itself '{ctype.strip()}'")


def test_a_boundary_of_70_characters_is_taken_and_71_refused() -> None:
    assert check_boundary("b" * 70) == b"b" * 70
    with pytest.raises(MultipartError, match="1-70 characters"):
        check_boundary("b" * 71)


def test_headers_of_exactly_the_limit_are_taken() -> None:
    headers = {"X-Fill": "v"}
    block = len(b"X-Fill: v")  # the header lines, without the blank line that ends them
    data = body([(headers, b"data")])
    for limit, ok in ((block, True), (block - 1, False)):
        parser = MultipartParser(BOUNDARY, 64, Limits(max_header_bytes=limit))
        if ok:
            (part,) = parser.feed(data)
            with part:
                assert part.file.read() == b"data"
        else:
            with pytest.raises(MultipartError, match="headers exceed"):
                parser.feed(data)


def test_parts_complete_before_an_error_are_handed_out_first() -> None:
    good = body([({}, b"one")])[: -len(b"--")]  # the first part and the start of a second delimiter
    data = good + b"X\r\n\r\ntwo"  # ... which is not followed by CRLF
    parser = MultipartParser(BOUNDARY, 64)
    (part,) = parser.feed(data)
    with part:
        assert part.file.read() == b"one"
    with pytest.raises(MultipartError, match="not followed by CRLF"):
        parser.feed(b"")


def test_iter_parts_applies_its_limits() -> None:
    data = body([({}, b"one"), ({}, b"two")])

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    async def run() -> None:
        async for part in iter_parts(chunks(), BOUNDARY, 1024, Limits(max_parts=1)):
            part.close()

    with pytest.raises(LimitExceeded, match="more than 1 parts"):
        asyncio.run(run())
