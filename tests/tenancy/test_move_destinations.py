"""C-MOVE destinations can belong to tenants: an AE of another tenant gets
the answer of a destination that does not exist (0xA801) and the
destination receives nothing; the owning tenant's moves arrive."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

from testbed.processes import free_port
from tests.support import Archive

OWNER, OTHER = "OWNERAE", "OTHERAE"


class Destination:
    """A real storage SCP recording the SOP Instance UIDs it receives."""

    def __init__(self) -> None:
        self.port = free_port()
        self.received: list[str] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="DEST")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture(scope="module")
def destination() -> Iterator[Destination]:
    dest = Destination()
    yield dest
    dest.server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, destination: Destination) -> Iterator[Archive]:
    archive = Archive(
        tmp_path_factory.mktemp("move-destinations"),
        extra_env={
            "DICOMSERVER_AE_TENANTS": json.dumps({OWNER: "owner", OTHER: "other"}),
            "DICOMSERVER_DIMSE_PEERS": json.dumps(
                {
                    "OWNED": {"host": "127.0.0.1", "port": destination.port, "tenants": ["owner"]},
                    "SHARED": {"host": "127.0.0.1", "port": destination.port},
                }
            ),
        },
    )
    archive.start()
    yield archive
    assert archive.stop() == 0, "".join(archive.output)


def store(server: Archive, calling: str) -> tuple[str, str]:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.PatientID = "Move^Test", "MOVE-1"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


def move(server: Archive, calling: str, destination: str, study: str) -> int:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.ae_title)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study
    statuses = [s.Status for s, _ in assoc.send_c_move(query, destination, StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    return int(statuses[-1])


def test_a_destination_of_another_tenant_is_unknown(server: Archive, destination: Destination) -> None:
    study, sop = store(server, OTHER)
    assert move(server, OTHER, "OWNED", study) == 0xA801
    assert move(server, OTHER, "NOSUCHDEST", study) == 0xA801  # the same answer
    assert destination.received == []
    assert move(server, OTHER, "SHARED", study) == 0x0000
    assert destination.received == [sop]


def test_the_owning_tenant_moves_to_its_destination(server: Archive, destination: Destination) -> None:
    study, sop = store(server, OWNER)
    assert move(server, OWNER, "OWNED", study) == 0x0000
    assert destination.received[-1] == sop
