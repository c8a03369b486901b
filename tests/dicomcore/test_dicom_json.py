"""DICOM JSON details, on objects encoded here byte by byte: values strict
pydicom refuses (kept as sent), numbers that are not numbers, non-finite
floats, person names, implicit VR lookups (private dictionary, ambiguous VRs
resolved by Pixel Representation and inherited into items as pydicom does),
UN read as its real VR, character sets, and the bytes written. Each object is
also compared with the pydicom path (the reference), element by element."""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest

import dicomcore
from dicomcore import dataset_json as reference_json
from tests.dicomcore.dicomcore_support import (
    INT_KEYWORDS,
    KEYWORDS,
    element,
    item,
    part10,
    reference,
    sequence,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"


def _compare(data: bytes, kept: dict[str, Any] | None = None) -> dict[str, Any]:
    """dicomcore's JSON of `data` equals the reference's, but for the
    elements in `kept` (those the reference leaves out), which must be as given."""
    header = dicomcore.read_header(data)
    mine = json.loads(header.json_bytes())
    ref = reference(data)
    assert ref.rejected is None and ref.json is not None and ref.texts is not None and ref.ints is not None
    theirs = json.loads(reference_json.dumps(ref.json))
    kept = kept or {}
    assert set(mine) - set(theirs) == set(kept)
    assert set(theirs) <= set(mine)
    for key in theirs:
        assert mine[key] == theirs[key], key
    for key, value in kept.items():
        assert mine[key] == value, key
    for kw in KEYWORDS:
        assert header.text(kw) == ref.texts[kw], kw
    for kw in INT_KEYWORDS:
        assert header.int(kw) == ref.ints[kw], kw
    assert header.frames == ref.frames
    return mine


def test_values_strict_pydicom_refuses_are_kept_as_sent() -> None:
    body = b"".join(
        [
            element(0x00080005, "CS", b"ISO_IR 100"),
            element(0x00080016, "UI", b"1.2.840.10008.5.1.4.1.1.7\0"),
            element(0x00080018, "UI", b"1.2.03.4"),  # read before the strict conversion: kept there too
            element(0x00080020, "DA", b"20231301"),  # month 13: pydicom does not check dates when reading
            element(0x00080060, "CS", b"ct"),  # lowercase
            element(0x00081030, "LO", b"x" * 80),  # longer than 64
            element(0x00181030, "LO", b"d\xe9j\xe0 vu"),  # Latin-1
            element(0x00200011, "IS", b"1.5"),  # not an integer string
            element(0x00200013, "IS", b"12\\\\3"),  # an empty value among three
            element(0x00200052, "UI", b"1.2.03.4"),  # a leading zero
            element(0x00201041, "DS", b"12345678901234567"),  # 17 characters
            element(0x00281050, "DS", b"NaN\\1e999\\-1e999\\abc"),
        ]
    )
    mine = _compare(
        part10(body),
        kept={
            "00200052": {"vr": "UI", "Value": ["1.2.03.4"]},
            "00081030": {"vr": "LO", "Value": ["x" * 80]},
            "00200011": {"vr": "IS", "Value": ["1.5"]},
            "00200013": {"vr": "IS", "Value": [12, None, 3]},
            "00201041": {"vr": "DS", "Value": [1.2345678901234568e16]},
            "00281050": {"vr": "DS", "Value": ["NaN", "inf", "-inf", "abc"]},
        },
    )
    assert mine["00080018"] == {"vr": "UI", "Value": ["1.2.03.4"]}
    assert mine["00080020"] == {"vr": "DA", "Value": ["20231301"]}
    assert mine["00080060"] == {"vr": "CS", "Value": ["ct"]}  # pydicom does not check CS when reading
    assert mine["00181030"] == {"vr": "LO", "Value": ["déjà vu"]}


def test_numbers() -> None:
    body = b"".join(
        [
            element(0x00180050, "DS", b" 2.5 "),
            element(0x00189219, "FD", struct.pack("<3d", math.nan, math.inf, -2.5)),
            element(0x00189220, "FL", struct.pack("<2f", -math.inf, 0.1)),
            element(0x00189113, "SL", struct.pack("<2l", -1, 2)),
            element(0x00200013, "IS", b"+7 "),
            element(0x00209165, "AT", struct.pack("<4H", 0x0010, 0x0010, 0x7FE0, 0x0010)),
            element(0x00280010, "US", struct.pack("<H", 512)),
            element(0x00280030, "DS", b"0.5\\.25\\5.\\-1E+2"),
            element(0x00720062, "SV", struct.pack("<q", -(2**62))),
            element(0x00720066, "UV", struct.pack("<Q", 2**63)),
        ]
    )
    mine = _compare(part10(body))
    assert mine["00280030"]["Value"] == [0.5, 0.25, 5.0, -100.0]
    assert mine["00189219"]["Value"] == ["NaN", "inf", -2.5]
    assert mine["00189220"]["Value"] == ["-inf", struct.unpack("<f", struct.pack("<f", 0.1))[0]]
    assert mine["00209165"]["Value"] == ["00100010", "7FE00010"]
    assert mine["00720066"]["Value"] == [2**63]


def test_a_number_of_the_wrong_length_is_written_as_un() -> None:
    # US of 3 bytes, written by hand with its odd length.
    body = b"\x18\x00\x10\x13US\x03\x00\x01\x02\x03"
    _compare(part10(body), kept={"00181310": {"vr": "UN", "InlineBinary": "AQID"}})


def test_person_names() -> None:
    body = b"".join(
        [
            element(0x00080005, "CS", b"ISO_IR 192"),
            element(0x00080090, "PN", b""),
            element(0x00081060, "PN", b"A^B\\\\=C\\"),  # empty values among several
            element(0x00100010, "PN", "Yamada^Tarou=山田^太郎=やま".encode()),
        ]
    )
    mine = _compare(part10(body))
    assert mine["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やま"}]
    assert mine["00081060"]["Value"] == [{"Alphabetic": "A^B"}, None, {"Alphabetic": "", "Ideographic": "C"}, None]
    assert mine["00080090"] == {"vr": "PN"}


def test_binary_values_and_bulk_data_uris() -> None:
    icon = element(0x7FE00010, "OW", bytes(2048))
    body = b"".join(
        [
            element(0x00091010, "LO", b"ACME"),
            element(0x00091011, "OB", bytes(range(256)) * 3),  # 768 bytes: inline
            element(0x00091012, "OB", bytes(770)),  # beyond: a URI
            sequence(0x00880200, [item(icon)]),
        ]
    )
    mine = _compare(part10(body))
    assert "InlineBinary" in mine["00091011"]
    assert mine["00091012"] == {"vr": "OB", "BulkDataURI": "bulkdata/00091012"}
    assert mine["00880200"]["Value"][0]["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/00880200/0/7FE00010"}


@pytest.mark.parametrize("undefined", [False, True])
@pytest.mark.parametrize("pixel_rep", [0, 1])
def test_implicit_vr_ambiguous_values(pixel_rep: int, undefined: bool) -> None:
    """US or SS by Pixel Representation: in the dataset (even before it), and
    in items, which inherit it from a sequence of defined length only."""

    def implicit(tag: int, value: bytes) -> bytes:
        return element(tag, "", value, implicit=True)

    minus3 = struct.pack("<h", -3)
    inner = b"".join(
        [
            implicit(0x00280120, struct.pack("<h", -2)),
            implicit(0x00283002, struct.pack("<3H", 1, 0, 16)),  # LUT Descriptor: one entry
            implicit(0x00283006, struct.pack("<H", 9)),  # so LUT Data is US
        ]
    )
    body = b"".join(
        [
            implicit(0x00189810, struct.pack("<h", -7)),  # before Pixel Representation
            implicit(0x00280103, struct.pack("<H", pixel_rep)),
            implicit(0x00280106, minus3),
            sequence(0x00283010, [item(inner, undefined=undefined)], implicit=True, undefined=undefined),
            implicit(0x60003000, bytes(8)),  # overlay data: OW
            implicit(0x00281200, bytes(4)),  # Gray LUT Data, US or SS or OW: pydicom leaves it so
        ]
    )
    header = dicomcore.read_header(part10(body, IMPLICIT))
    ref = reference(part10(body, IMPLICIT))
    assert ref.json is not None
    mine = json.loads(header.json_bytes())
    theirs = json.loads(reference_json.dumps(ref.json))
    # pydicom writes "US or SS or OW" as the VR of Gray LUT Data; dicomcore writes OW.
    assert theirs.pop("00281200")["vr"] == "US or SS or OW" and mine.pop("00281200")["vr"] == "OW"
    assert mine == theirs
    assert mine["00280106"] == {"vr": "US", "Value": [65533]} if pixel_rep == 0 else {"vr": "SS", "Value": [-3]}
    inherited = not undefined and pixel_rep == 1
    assert mine["00283010"]["Value"][0]["00280120"]["vr"] == ("SS" if inherited else "US")
    assert mine["00283010"]["Value"][0]["00283006"] == {"vr": "US", "Value": [9]}
    assert mine["60003000"]["vr"] == "OW"


def test_implicit_vr_private_elements() -> None:
    def implicit(tag: int, value: bytes) -> bytes:
        return element(tag, "", value, implicit=True)

    body = b"".join(
        [
            implicit(0x00290010, b"SIEMENS CSA HEADER"),
            implicit(0x00291008, b"IMAGE NUM 4 "),  # known: CS
            implicit(0x00291010, b"SV10"),  # known: OB
            implicit(0x00431010, b"NOBODY KNOWS"),
            implicit(0x00431011, b"text"),  # unknown creator: UN
            implicit(0x00450000, struct.pack("<L", 4)),  # a private group length: UN
            implicit(0x00990000 | 0x1000, b"ab"),  # no creator at all
        ]
    )
    mine = _compare(part10(body, IMPLICIT))
    assert mine["00291008"] == {"vr": "CS", "Value": ["IMAGE NUM 4"]}
    assert mine["00291010"]["vr"] == "OB"
    assert mine["00431011"] == {"vr": "UN", "InlineBinary": "dGV4dA=="}


def test_implicit_vr_unknown_public_tag_is_kept_as_un() -> None:
    # Strict pydicom cannot look its VR up and leaves it out; lenient pydicom calls it UN.
    body = element(0x00080005, "", b"ISO_IR 100", implicit=True) + element(0x00300004, "", b"ab", implicit=True)
    _compare(part10(body, IMPLICIT), kept={"00300004": {"vr": "UN", "InlineBinary": "YWI="}})


def test_explicit_un_is_read_as_its_real_vr() -> None:
    un_item = item(element(0x00080100, "", b"T-D1100 ", implicit=True))
    body = b"".join(
        [
            element(0x00082218, "UN", un_item),  # Anatomic Region Sequence sent as UN: implicit VR items
            sequence(0x00082228, [un_item], vr="UN", undefined=True),  # UN of undefined length: a sequence
            element(0x00100010, "UN", b"Doe^Jane"),
            element(0x00280010, "UN", struct.pack("<H", 256)),
        ]
    )
    mine = _compare(part10(body))
    assert mine["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}
    assert mine["00280010"] == {"vr": "US", "Value": [256]}
    expected = {"vr": "SQ", "Value": [{"00080100": {"vr": "SH", "Value": ["T-D1100"]}}]}
    assert mine["00082218"] == expected and mine["00082228"] == expected


def test_an_explicit_vr_sequence_with_implicit_vr_items() -> None:
    body = sequence(
        0x00081250,
        [item(element(0x00100010, "", b"Doe^Jane", implicit=True)), item(element(0x00100010, "PN", b"Roe^Rich"))],
        undefined=True,
    )
    mine = _compare(part10(body))
    assert [i["00100010"]["Value"][0]["Alphabetic"] for i in mine["00081250"]["Value"]] == ["Doe^Jane", "Roe^Rich"]


def test_explicit_vr_big_endian() -> None:
    body = b"".join(
        [
            element(0x00100010, "PN", b"Big^Endian", little=False),
            element(0x00189219, "FD", struct.pack(">d", 1.5), little=False),
            element(0x00209165, "AT", struct.pack(">2H", 0x0010, 0x0010), little=False),
            element(0x00280010, "US", struct.pack(">H", 300), little=False),
            sequence(
                0x00081250,
                [item(element(0x00280011, "US", struct.pack(">H", 7), little=False), little=False)],
                little=False,
            ),
        ]
    )
    mine = _compare(part10(body, BIG))
    assert mine["00280010"]["Value"] == [300] and mine["00209165"]["Value"] == ["00100010"]
    assert mine["00081250"]["Value"][0]["00280011"]["Value"] == [7]


def test_character_sets() -> None:
    inner = element(0x00080005, "CS", b"ISO_IR 192") + element(0x00100010, "PN", "Gómez".encode())
    body = b"".join(
        [
            element(0x00080005, "CS", b"\\ISO 2022 IR 87"),
            element(0x00081030, "LO", b"\x1b$B;3ED\x1b(B"),
            sequence(0x00081250, [item(inner)]),
            element(0x00100010, "PN", b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B"),
        ]
    )
    mine = _compare(part10(body))
    assert mine["00100010"]["Value"][0]["Ideographic"] == "山田^太郎"
    assert mine["00081250"]["Value"][0]["00100010"]["Value"] == [{"Alphabetic": "Gómez"}]


def test_text_that_does_not_decode() -> None:
    body = element(0x00080005, "CS", b"ISO_IR 192") + element(0x00321060, "LO", b"ok \xff\xfe")
    _compare(part10(body), kept={"00321060": {"vr": "LO", "Value": ["ok \ufffd\ufffd"]}})


def test_bytes_are_strict_utf8_json() -> None:
    attrs = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "a\ud800b"}]}, "x": {"vr": "FD", "Value": [1e-7]}}
    out = dicomcore.dumps(attrs)
    assert json.loads(out)["00100010"]["Value"][0]["Alphabetic"] == "a?b"
    assert out == reference_json.dumps(attrs)
    ordinary = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller"}]}, "n": {"vr": "DS", "Value": [1e-7, 1e16]}}
    assert json.loads(dicomcore.dumps(ordinary)) == json.loads(reference_json.dumps(ordinary))
    assert "Müller".encode() in dicomcore.dumps(ordinary)


def test_text_and_int_of_odd_values() -> None:
    body = b"".join(
        [
            element(0x00100010, "PN", b"A==\\B=C"),
            element(0x00200011, "IS", b" 12 "),
            element(0x00200013, "IS", b"abc"),
            element(0x00280008, "IS", b"3\\4"),
            element(0x00280010, "US", struct.pack("<2H", 1, 2)),
        ]
    )
    data = part10(body)
    _compare(data, kept={"00200013": {"vr": "IS", "Value": ["abc"]}})
    header = dicomcore.read_header(data)
    assert header.text("PatientName") == "A\\B=C"
    assert header.text("SeriesNumber") == "12" and header.int("SeriesNumber") == 12
    assert header.text("InstanceNumber") == "abc" and header.int("InstanceNumber") == 0
    assert header.int("Rows") == 0 and header.int("NumberOfFrames") == 0
    assert header.frames == 1  # Number of Frames is not one number; no pixel data, but Rows
    assert header.text(0x00200011) == header.text("00200011") == "12"
    with pytest.raises(KeyError):
        header.text("NoSuchKeyword")
