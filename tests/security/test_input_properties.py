"""Property tests of what parses untrusted input: the multipart parser, the
QIDO-RS query parser (through the real query engine on SQLite), and the DICOM
JSON writer. Each input either parses or is refused with the error a client
gets as a 4xx; no other exception, and what parses round-trips."""

from __future__ import annotations

import json
import math
import re
import string
import warnings
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from common.gen.dicomserver.v1 import dicom_pb2
from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.ingest import Rejected, read_record
from common.validation import InvalidValue, is_uid
from dicomcore import dataset_json, matching
from dicomcore.status import CANNOT_UNDERSTAND
from dicomweb_gateway.errors import ApiError
from dicomweb_gateway.multipart import (
    LimitExceeded,
    Limits,
    MultipartError,
    MultipartParser,
    Part,
    check_boundary,
)
from dicomweb_gateway.qido import QueryLimits, build_query
from metadata_svc.db import Database
from metadata_svc.index import MetadataIndex
from tests.security.security_support import budget, make_instance, multipart, raw_part10

# ---- multipart --------------------------------------------------------------

BCHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"
boundaries = st.text(BCHARS + " ", min_size=1, max_size=70).filter(lambda b: not b.endswith(" "))
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: n.lower() != "content-type"
)
header_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30)


def bodies(boundary: bytes) -> st.SearchStrategy[bytes]:
    """Payloads rich in near-delimiters: CR, LF, dashes and boundary prefixes."""
    pieces = st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"-", b"--", b"\r\n--", b"\r\n\r\n"]),
        st.integers(0, len(boundary)).map(lambda k: b"\r\n--" + boundary[:k]),
    )
    delimiter = b"\r\n--" + boundary
    return st.lists(pieces, max_size=8).map(b"".join).filter(lambda b: delimiter not in b)


@st.composite
def multipart_messages(draw: st.DrawFn) -> tuple[bytes, list[tuple[dict[str, str], bytes]], bytes]:
    boundary = draw(boundaries).encode("ascii")
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        names = draw(st.lists(header_names, max_size=3, unique_by=str.lower))
        headers = {n: draw(header_values) for n in names}
        if draw(st.booleans()):
            headers["Content-Type"] = "application/dicom"
        parts.append((headers, draw(bodies(boundary))))
    preamble = draw(bodies(boundary).filter(lambda b: not b.startswith(b"--" + boundary)))
    epilogue = draw(st.binary(max_size=20))
    return boundary, parts, multipart(parts, boundary, preamble, epilogue)


def feed_all(parser: MultipartParser, data: bytes, cuts: list[int]) -> list[tuple[dict[str, str], bytes]]:
    """Feeds `data` split at `cuts`; returns (headers, body) of every part."""
    got: list[tuple[dict[str, str], bytes]] = []

    def take(parts: list[Part]) -> None:
        for part in parts:
            with part:
                body = part.file.read()
                assert len(body) == part.size
                got.append((part.headers, body))

    try:
        start = 0
        for cut in sorted(set(c % (len(data) + 1) for c in cuts)) + [len(data)]:
            take(parser.feed(data[start:cut]))
            start = cut
        parser.close()
    finally:
        parser.abort()
    return got


@budget(150)
@given(multipart_messages(), st.lists(st.integers(0, 10_000), max_size=6), st.integers(0, 64))
def test_multipart_round_trip(message: Any, cuts: list[int], spool: int) -> None:
    boundary, parts, data = message
    got = feed_all(MultipartParser(boundary, spool), data, cuts)
    assert got == [({k.lower(): v.strip() for k, v in h.items()}, body) for h, body in parts]


@budget(150)
@given(
    multipart_messages(),
    st.lists(st.integers(0, 10_000), max_size=4),
    st.integers(0, 60),
    st.integers(0, 6),
    st.integers(0, 200),
)
def test_multipart_limits_refuse_exactly_what_breaks_them(
    message: Any, cuts: list[int], max_part: int, max_parts: int, max_header: int
) -> None:
    boundary, parts, data = message
    limits = Limits(max_part_bytes=max_part, max_parts=max_parts, max_header_bytes=max_header)
    header_sizes = [len(multipart([(h, b"")], b"x")) for h, _ in parts]  # an upper bound
    breaks_size = any(len(body) > max_part for _, body in parts[: max_parts + 1])
    breaks_count = len(parts) > max_parts
    try:
        got = feed_all(MultipartParser(boundary, 64, limits), data, cuts)
    except LimitExceeded:
        assert breaks_size or breaks_count
        return
    except MultipartError as exc:
        assert exc.status == 400 and "headers exceed" in str(exc)
        assert any(size > max_header for size in header_sizes)
        return
    assert not breaks_size and not breaks_count
    assert len(got) == len(parts)


garbage_pieces = st.one_of(
    st.binary(max_size=30),
    st.sampled_from(
        [
            b"--b",
            b"\r\n--b",
            b"\r\n--b--",
            b"--b--",
            b"\r\n",
            b"\r\n\r\n",
            b"Content-Type: application/dicom",
            b"Content-Type: multipart/related; boundary=b",
            b" \t",
            b":",
            b"\r\n \r\n",
            b"X" * 300,
        ]
    ),
)


@budget(300)
@given(
    st.lists(garbage_pieces, max_size=12).map(b"".join),
    st.lists(st.integers(0, 4000), max_size=5),
    st.integers(1, 100),
    st.integers(0, 5),
)
def test_multipart_arbitrary_bytes_parse_or_raise_multipart_error(
    data: bytes, cuts: list[int], max_part: int, max_parts: int
) -> None:
    parser = MultipartParser(b"b", 16, Limits(max_part_bytes=max_part, max_parts=max_parts, max_header_bytes=64))
    try:
        got = feed_all(parser, data, cuts)
    except MultipartError as exc:
        assert exc.status in (400, 413, 415)
        assert str(exc)
        return
    # Parsed: there was a closing delimiter, and every body is bytes of the message.
    assert b"--b--" in data
    assert len(got) <= max_parts
    assert all(len(body) <= max_part and body in data for _, body in got)


@budget(200)
@given(st.one_of(st.none(), st.text(max_size=80)))
def test_boundary_parameter_is_valid_or_refused(boundary: str | None) -> None:
    valid = (
        boundary is not None
        and 1 <= len(boundary) <= 70
        and not boundary.endswith(" ")
        and set(boundary) <= set(BCHARS + " ")
    )  # RFC 2046 section 5.1.1
    try:
        raw = check_boundary(boundary)
    except MultipartError as exc:
        assert not valid, f"a valid boundary was refused: {exc}"
        return
    assert valid and raw == boundary.encode("ascii")


@budget(100)
@given(boundaries)
def test_every_valid_boundary_is_taken(boundary: str) -> None:
    assert check_boundary(boundary) == boundary.encode("ascii")


# ---- QIDO-RS query strings --------------------------------------------------

KEYS = [
    "PatientName",
    "PatientID",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "ModalitiesInStudy",
    "AccessionNumber",
    "StudyDescription",
    "SeriesNumber",
    "InstanceNumber",
    "ReferringPhysicianName",
    "PatientBirthDate",
    "Rows",
    "PixelData",
    "00100010",
    "0020000d",
    "7FE00010",
    "FFFEE000",
    "00000000",
    "00091010",
    "00280030",
    "ZZZZZZZZ",
    "includefield",
    "limit",
    "offset",
    "fuzzymatching",
    "IncludeField",
    "",
]
VALUES = [
    "",
    "*",
    "?",
    "**",
    "1.2.3",
    "1.2.3\\1.2.4",
    "1.2.3,",
    "01.2",
    "1." + "2" * 70,
    "20200101-",
    "-20200101",
    "-",
    "20200101-20191231",
    "1200-",
    "' OR 1=1 --",
    "%",
    "_",
    "\\",
    "\\\\",
    "*" * 2000,
    "a*" * 70,
    "\x00",
    "a\tb",
    "true",
    "FALSE",
    "all",
    "-1",
    "0",
    "2147483648",
    "1e3",
    "Müller^Jürgen",
    "=^",
    "ドウ",
    "\ufffd",
    "SELECT *",
]
param_keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
param_values = st.one_of(
    st.sampled_from(VALUES), st.text(max_size=40), st.lists(st.sampled_from(VALUES), max_size=4).map("".join)
)
LEVELS = [
    dicom_pb2.QUERY_LEVEL_PATIENT,
    dicom_pb2.QUERY_LEVEL_STUDY,
    dicom_pb2.QUERY_LEVEL_SERIES,
    dicom_pb2.QUERY_LEVEL_INSTANCE,
]
LIMITS = QueryLimits(max_limit=50, max_params=8, max_includefields=4, max_value_length=64, max_wildcards=6)


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The real index on SQLite with two instances in it."""
    db = Database.from_url(f"sqlite:///{tmp_path_factory.mktemp('qido') / 'index.sqlite3'}")
    idx = MetadataIndex(db, max_query_limit=100)
    for i, name in enumerate(("Müller^Jürgen", "O'Brien^100%_x")):
        _, data = make_instance(name=name, patient_id=f"P{i}")
        record = read_record(data, len(data), "default")
        record.location.object_key = f"objects/{record.location.ref.sop_instance_uid}.dcm"
        idx.index([record], md_pb.DUPLICATE_POLICY_OVERWRITE)
    yield idx
    db.dispose()


def _filter_strings(f: md_pb.Filter) -> list[str]:
    kind = f.WhichOneof("constraint")
    if kind == "range":
        return [f.range.lower, f.range.upper]
    if kind == "uid_list":
        return list(f.uid_list.values)
    return [getattr(f, kind)] if kind in ("equal", "wildcard", "fuzzy") else []


@budget(400)
@given(st.lists(st.tuples(param_keys, param_values), max_size=10), st.sampled_from(LEVELS))
def test_qido_query_is_a_valid_request_or_a_400(
    index: MetadataIndex, params: list[tuple[str, str]], level: int
) -> None:
    try:
        query = build_query(params, level, "default", limits=LIMITS)
    except ApiError as exc:
        assert exc.status == 400 and exc.message
        return
    query.SerializeToString()
    assert 0 <= query.limit <= LIMITS.max_limit
    assert len(params) <= LIMITS.max_params
    assert all(len(tag) == 8 for tag in query.include_fields)
    for f in query.filters:
        vr = matching.vr_of(int(f.tag, 16))
        for text in _filter_strings(f):
            assert len(text) <= LIMITS.max_value_length
            assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)
            if vr == "UI":
                assert is_uid(text)
        if f.WhichOneof("constraint") == "wildcard":
            assert "**" not in f.wildcard
            assert f.wildcard.count("*") + f.wildcard.count("?") <= LIMITS.max_wildcards
    # The engine answers it or refuses it as invalid (a 400), nothing else.
    try:
        result = index.query(query)
    except InvalidValue:
        return
    for match in result.matches:
        json.loads(dataset_json.dumps(match))


STRING_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}  # wildcards apply (PS3.4 C.2.2.2.4)
NAMES = {"P0": "Müller^Jürgen", "P1": "O'Brien^100%_x"}  # the index fixture's two patients


def _wildcards(value: str) -> st.SearchStrategy[str]:
    """`value` with some characters turned into '?' and a tail into '*'."""
    return st.tuples(st.sets(st.integers(0, len(value) - 1), max_size=4), st.integers(0, len(value))).map(
        lambda t: (
            "".join("?" if i in t[0] else c for i, c in enumerate(value[: t[1]])) + ("*" if t[1] < len(value) else "")
        )
    )


@st.composite
def valid_queries(draw: st.DrawFn) -> list[tuple[str, str]]:
    params = []
    if draw(st.booleans()):
        params.append(("PatientName", draw(_wildcards(draw(st.sampled_from(sorted(NAMES.values())))))))
    if draw(st.booleans()):
        params.append(("PatientID", draw(_wildcards(draw(st.sampled_from(sorted(NAMES)))))))
    if draw(st.booleans()):
        # Each holds the fixture's 20240102.
        params.append(("StudyDate", draw(st.sampled_from(["20240102", "20240101-", "-20240103", "20240101-20240103"]))))
    return draw(st.permutations(params))


def _matches(pattern: str, value: str) -> bool:
    return (
        re.fullmatch("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), value, re.S)
        is not None
    )


@budget(150)
@given(valid_queries())
def test_valid_qido_queries_answer_exactly_the_matching_studies(
    index: MetadataIndex, params: list[tuple[str, str]]
) -> None:
    """The other half of the property above: a valid query is never refused,
    and finds what a plain wildcard matcher says it should."""
    query = build_query(params, dicom_pb2.QUERY_LEVEL_STUDY, "default", limits=LIMITS)
    got = sorted(json.loads(dataset_json.dumps(m))["00100020"]["Value"][0] for m in index.query(query).matches)
    want = sorted(
        pid
        for pid, name in NAMES.items()
        if all(k == "StudyDate" or _matches(v, {"PatientName": name, "PatientID": pid}[k]) for k, v in params)
    )
    assert got == want


@budget(300)
@given(st.integers(0, 2**32 - 1), st.text(max_size=80), st.booleans())
def test_matching_parse_any_tag_any_text(tag: int, raw: str, fuzzy: bool) -> None:
    vr = matching.vr_of(tag)
    # Outside UIDs and date/time ranges the rule is simple, so it is pinned:
    # refused exactly when too long, with control characters, or with too
    # many wildcards.
    stars = re.sub(r"\*{2,}", "*", raw)
    pinned = vr not in ("UI", "DA", "TM", "DT")
    valid = (
        len(raw) <= matching.MAX_VALUE_LENGTH
        and not re.search(r"[\x00-\x1f\x7f]", raw)
        and not (
            vr in STRING_VRS
            and not (vr == "PN" and fuzzy)
            and stars.count("*") + stars.count("?") > matching.MAX_WILDCARDS
        )
    )
    try:
        f = matching.parse(tag, raw, fuzzy)
    except InvalidValue as exc:
        assert str(exc)
        assert not (pinned and valid), f"refused: {exc}"
        return
    assert not pinned or valid
    assert f.tag == f"{tag:08X}"
    if pinned and raw:
        kind = f.WhichOneof("constraint")
        assert getattr(f, kind) == (stars if kind == "wildcard" else raw)
    f.SerializeToString()


def test_sql_specials_match_literally(index: MetadataIndex) -> None:
    """'%' and '_' in a value are characters, not SQL wildcards."""

    def names(value: str) -> list[str]:
        query = build_query([("PatientName", value)], dicom_pb2.QUERY_LEVEL_STUDY, "default")
        return sorted(m["00100010"]["Value"][0]["Alphabetic"] for m in index.query(query).matches)

    assert names("*") == ["Müller^Jürgen", "O'Brien^100%_x"]
    assert names("*%*") == ["O'Brien^100%_x"]
    assert names("o'brien^100%_x") == ["O'Brien^100%_x"]
    assert names("%") == []
    assert names("_*") == []
    assert names("' OR 1=1 --") == []


# ---- DICOM JSON -------------------------------------------------------------

# Text without the value separator; odd characters on purpose (controls, CJK, emoji).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\\"), max_size=12)
PN_COMPONENT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\\^="), max_size=6)
PN = st.lists(st.lists(PN_COMPONENT, min_size=1, max_size=5).map("^".join), min_size=1, max_size=3).map("=".join)
UID = st.lists(st.integers(0, 10**6).map(str), min_size=1, max_size=8).map(".".join).filter(lambda u: len(u) <= 64)
DS = st.one_of(
    st.integers(-(10**12), 10**12).map(str), st.floats(-1e10, 1e10, allow_nan=False).map(lambda f: f"{f:.6g}")
)
F32 = st.floats(width=32)
F64 = st.floats()


def multi(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """None (empty), one value, or several."""
    return st.one_of(st.none(), values, st.lists(values, min_size=1, max_size=4))


ELEMENTS: dict[str, tuple[str, st.SearchStrategy[Any]]] = {
    "RetrieveAETitle": ("AE", multi(st.text(string.ascii_uppercase, min_size=1, max_size=16))),
    "PatientAge": ("AS", multi(st.sampled_from(["030Y", "002M", "001D"]))),
    "StudyDate": ("DA", multi(st.sampled_from(["20240102", "19000101", ""]))),
    "StudyTime": ("TM", multi(st.sampled_from(["1200", "235959.123456", "07"]))),
    "AcquisitionDateTime": ("DT", multi(st.sampled_from(["20240102120000", "2024", "20240102120000.5+0100"]))),
    "PixelSpacing": ("DS", multi(DS)),
    "InstanceNumber": ("IS", multi(st.integers(-(2**31), 2**31 - 1))),
    "SOPInstanceUID": ("UI", multi(UID)),
    "RetrieveURL": ("UR", st.one_of(st.none(), st.text(string.ascii_letters + ":/?=&.", max_size=30))),
    "PatientComments": ("LT", st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=30))),
    "InstitutionAddress": ("ST", st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=30))),
    "TextValue": ("UT", st.one_of(st.none(), st.text(st.characters(exclude_categories=("Cs",)), max_size=30))),
    "LongCodeValue": ("UC", multi(TEXT)),
    "PatientName": ("PN", multi(PN)),
    "OtherPatientNames": ("PN", multi(PN)),
    "PatientID": ("LO", multi(TEXT)),
    "AccessionNumber": ("SH", multi(TEXT)),
    "ImageType": ("CS", multi(st.text(string.ascii_uppercase + "_ ", max_size=16))),
    "Rows": ("US", multi(st.integers(0, 2**16 - 1))),
    "SelectorSSValue": ("SS", multi(st.integers(-(2**15), 2**15 - 1))),
    "SelectorULValue": ("UL", multi(st.integers(0, 2**32 - 1))),
    "SelectorSLValue": ("SL", multi(st.integers(-(2**31), 2**31 - 1))),
    "SelectorSVValue": ("SV", multi(st.integers(-(2**63), 2**63 - 1))),
    "SelectorUVValue": ("UV", multi(st.integers(0, 2**64 - 1))),
    "SelectorFLValue": ("FL", multi(F32)),
    "SelectorFDValue": ("FD", multi(F64)),
    "DimensionIndexPointer": ("AT", multi(st.integers(0, 2**32 - 1))),
    "EncapsulatedDocument": ("OB", st.one_of(st.none(), st.binary(max_size=1100))),
    "RedPaletteColorLookupTableData": (
        "OW",
        st.one_of(st.none(), st.binary(max_size=1100).map(lambda b: b[: len(b) // 2 * 2])),
    ),
    "SelectorUNValue": ("UN", st.one_of(st.none(), st.binary(max_size=40))),
}


@st.composite
def datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    ds = Dataset()
    for keyword in draw(st.lists(st.sampled_from(sorted(ELEMENTS)), max_size=8, unique=True)):
        vr, values = ELEMENTS[keyword]
        ds.add_new(keyword, vr, draw(values))
    if depth < 2 and draw(st.booleans()):
        ds.add_new("ProcedureCodeSequence", "SQ", draw(st.lists(datasets(depth + 1), max_size=2)))
    return ds


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple, MultiValue)):
        return isinstance(b, (list, tuple, MultiValue)) and len(a) == len(b) and all(map(_same, a, b))
    return bool(a == b)


def _empty(value: Any) -> bool:
    return value is None or value == "" or value == b"" or (hasattr(value, "__len__") and len(value) == 0)


def assert_same_dataset(original: Dataset, back: Dataset, path: str = "") -> None:
    assert sorted(e.tag for e in original) == sorted(e.tag for e in back), path
    for elem in original:
        got = back[elem.tag]
        where = f"{path}{elem.tag}"
        if elem.VR == "SQ":
            assert len(elem.value) == len(got.value), where
            for i, (a, b) in enumerate(zip(elem.value, got.value, strict=False)):
                assert_same_dataset(a, b, f"{where}/{i}/")
        elif _empty(elem.value):
            assert _empty(got.value), where
        else:
            assert _same(elem.value, got.value), (where, elem.value, got.value)


def _strict_loads(raw: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise AssertionError(f"not JSON: {name}")

    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


def _bulk_value(ds: Dataset) -> Any:
    """A BulkDataURI handler that finds the value in the original dataset."""

    def handler(tag: str, vr: str, uri: str) -> Any:
        steps = uri.removeprefix("bulkdata/").split("/")
        node = ds
        while len(steps) > 1:
            node = node[int(steps[0], 16)].value[int(steps[1])]
            steps = steps[2:]
        return node[int(steps[0], 16)].value

    return handler


@budget(250)
@given(datasets())
def test_dicom_json_is_strict_json_and_round_trips(ds: Dataset) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd values; we want them
        attrs = dataset_json.dataset_to_json(ds)
        loaded = _strict_loads(dataset_json.dumps(attrs))
        back = Dataset.from_json(loaded, bulk_data_uri_handler=_bulk_value(ds))
    assert_same_dataset(ds, back)


CHARSETS = [
    "",
    "ISO_IR 100",
    "ISO_IR 192",
    "ISO 2022 IR 87",
    "GB18030",
    "ISO_IR 144",
    "NOT A CHARSET",
    "\\ISO 2022 IR 149",
]
RAW_TAGS = [
    (0x00080020, b"DA"),
    (0x00080050, b"SH"),
    (0x00081030, b"LO"),
    (0x00081190, b"UR"),
    (0x00100010, b"PN"),
    (0x00100020, b"LO"),
    (0x00104000, b"LT"),
    (0x00189087, b"FD"),
    (0x00200013, b"IS"),
    (0x00280030, b"DS"),
]


@budget(200)
@given(
    st.sampled_from(CHARSETS),
    st.lists(st.tuples(st.sampled_from(RAW_TAGS), st.binary(max_size=24)), max_size=6, unique_by=lambda t: t[0][0]),
)
def test_arbitrary_value_bytes_never_break_the_json(charset: str, raw: list[tuple[tuple[int, bytes], bytes]]) -> None:
    """What a STOW-RS or C-STORE peer can send: any bytes in any string element,
    under any declared character set. The index record either is refused
    (Rejected: the pipeline answers 0xC000) or carries JSON a browser can
    parse, with every element the object has."""
    data = raw_part10([(tag, vr, value) for (tag, vr), value in raw], charset)
    try:
        record = read_record(data, len(data), "default")
    except Rejected as exc:
        # Only escape-sequence character sets leave bytes that cannot be
        # decoded; every other set (or its fallback) decodes any byte.
        assert "ISO 2022" in charset, exc.reason
        assert exc.status == CANNOT_UNDERSTAND and "cannot be decoded" in exc.reason
        return
    loaded = _strict_loads(record.dicom_json)
    assert {"00080016", "00080018", "0020000D", "0020000E"} <= set(loaded)
    assert {f"{tag:08X}" for (tag, _vr), _value in raw} <= set(loaded)


def test_a_name_pydicom_could_not_decode_is_indexed_as_sent() -> None:
    """Found by the property test above: pydicom raised on this name (a
    control character in the ideographic group under ISO 2022 IR 87), and the
    object was refused. The header reader decodes it (ASCII until an escape),
    so it is stored, and its JSON is strict."""
    data = raw_part10([(0x00100010, b"PN", b"=\x01")], "ISO 2022 IR 87")
    record = read_record(data, len(data), "default")
    assert record.patient.patient_name == "=\x01"
    assert _strict_loads(record.dicom_json)["00100010"]["Value"] == [{"Alphabetic": "", "Ideographic": "\x01"}]


def test_non_finite_floats_are_strings() -> None:
    ds = Dataset()
    ds.SelectorFDValue = [math.nan, math.inf, -math.inf, 1.5]
    attrs = dataset_json.dataset_to_json(ds)
    assert attrs["00720074"]["Value"] == ["NaN", "inf", "-inf", 1.5]
    assert _strict_loads(dataset_json.dumps({"x": [math.nan]})) == {"x": ["NaN"]}
