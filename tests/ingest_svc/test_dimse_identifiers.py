"""C-FIND identifiers to Query requests and matches back to responses;
presentation contexts for C-MOVE destinations."""

from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000, CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from common.gen.dicomserver.v1 import dicom_pb2
from ingest_svc.queries import BadIdentifier, build_query, response
from ingest_svc.retrieval import contexts_for


def identifier(level: str, **keys: object) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def test_each_key_becomes_one_filter_and_one_returned_field() -> None:
    query = build_query(
        identifier(
            "STUDY",
            StudyDate="20200101-20201231",
            PatientName="Doe*",
            StudyInstanceUID="1.2.3\\1.2.4",
            AccessionNumber="",
            ModalitiesInStudy="CT",
        ),
        "default",
        StudyRootQueryRetrieveInformationModelFind,
    )
    assert query.request.level == dicom_pb2.QUERY_LEVEL_STUDY
    kinds = {f.tag: f.WhichOneof("constraint") for f in query.request.filters}
    assert kinds == {
        "00080020": "range",
        "00100010": "wildcard",
        "0020000D": "uid_list",
        "00080050": "universal",
        "00080061": "equal",
    }
    assert set(query.request.include_fields) == set(kinds)


def test_a_lone_star_is_universal_even_for_uids() -> None:
    query = build_query(
        identifier("SERIES", SeriesInstanceUID="*"), "default", StudyRootQueryRetrieveInformationModelFind
    )
    (flt,) = query.request.filters
    assert flt.universal


@pytest.mark.parametrize(
    "model,level",
    [
        (StudyRootQueryRetrieveInformationModelFind, "PATIENT"),
        (PatientRootQueryRetrieveInformationModelFind, "FRAME"),
        (PatientRootQueryRetrieveInformationModelFind, ""),
    ],
)
def test_levels_outside_the_model_do_not_match_the_sop_class(model: str, level: str) -> None:
    with pytest.raises(BadIdentifier) as err:
        build_query(identifier(level, PatientName=""), "default", model)
    assert err.value.status == 0xA900


def test_malformed_values_cannot_be_processed() -> None:
    with pytest.raises(BadIdentifier) as err:
        build_query(
            identifier("STUDY", StudyDate="2020-01-01-x"), "default", StudyRootQueryRetrieveInformationModelFind
        )
    assert err.value.status == 0xC000


def test_response_has_every_requested_key_and_nothing_else() -> None:
    query = build_query(
        identifier("STUDY", PatientName="", StudyDescription="", ReferencedStudySequence=[]),
        "default",
        StudyRootQueryRetrieveInformationModelFind,
    )
    match = json.dumps(
        {
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Jürgen"}]},
            "00100020": {"vr": "LO", "Value": ["not requested"]},
        }
    ).encode()
    ds = response(query, match)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds["StudyDescription"].is_empty and len(ds.ReferencedStudySequence) == 0
    assert "PatientID" not in ds


def test_contexts_offer_each_stored_syntax_alone_and_a_little_endian_fallback_for_uncompressed() -> None:
    def loc(ts: str) -> dicom_pb2.InstanceLocation:
        return dicom_pb2.InstanceLocation(sop_class_uid=CTImageStorage, transfer_syntax_uid=ts)

    contexts = contexts_for([loc(JPEG2000), loc(ExplicitVRLittleEndian), loc(JPEG2000)])
    assert [cx.transfer_syntax for cx in contexts] == [[JPEG2000], [ExplicitVRLittleEndian], [ImplicitVRLittleEndian]]


def test_associations_share_the_supported_contexts_instead_of_deep_copying_them() -> None:
    """pynetdicom deep-copies a server's contexts for each association; the
    server hands out a new list of the same (read-only) context objects."""
    from copy import deepcopy

    from ingest_svc.scp import DimseServer, build_ae
    from ingest_svc.settings import IngestSettings

    ae = build_ae(IngestSettings())
    server = ae.make_server(("127.0.0.1", 0), server_class=DimseServer)
    try:
        copied = deepcopy(server.contexts)
        assert copied is not server.contexts and copied == list(server.contexts)
        assert all(a is b for a, b in zip(copied, server.contexts, strict=False))
        assert len(copied) == len(ae.supported_contexts) > 170
    finally:
        server.server_close()
