from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from common.settings import CommonSettings


class Peer(BaseModel):
    """Where a remote AE listens."""

    host: str
    port: int
    # Tenants whose data may be sent there (C-MOVE); empty: any tenant.
    tenants: list[str] = []


class IngestSettings(CommonSettings):
    dimse_host: str = "127.0.0.1"
    dimse_port: int = 11112
    ae_title: str = "DICOMSERVER"
    # Refuse associations addressed to another called AE title.
    require_called_ae_title: bool = True
    # Accept private and unknown SOP classes as storage.
    accept_unknown_sop_classes: bool = True
    # Associations that only store or echo (storescu, dcmsend, modalities)
    # are served by the lean acceptor instead of pynetdicom (plain TCP only;
    # TLS associations always go to pynetdicom).
    dimse_lean_storage: bool = True
    # With it, associations that query or retrieve (C-FIND, C-GET, C-MOVE of
    # the patient and study root models, with storage and echo or not) too.
    dimse_lean_query_retrieve: bool = True
    # Seconds auth_svc's grants are reused: the principal of a peer (calling
    # and called AE title, address) and what it may do; refusals are never
    # reused. 0 asks for every association.
    auth_cache_seconds: float = 2.0
    # Largest PDU we receive; large PDUs are much faster on fast links.
    max_pdu_size: int = 1024 * 1024
    # Simultaneous associations per DIMSE process; more are rejected
    # (transient, local limit exceeded).
    max_associations: int = 32
    # Seconds without traffic before an association is aborted.
    network_timeout: float = 60.0
    # Seconds to wait for association negotiation and DIMSE replies.
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    # Objects in memory up to this size; larger ones spill to a temp file.
    spool_max_memory: int = 8 * 1024 * 1024
    # DIMSE processes sharing the port through SO_REUSEPORT (Linux); 1 runs
    # the SCP in the ingest process only.
    dimse_workers: int = 1
    # Remote AEs by title: C-MOVE destinations and where storage commitment
    # reports go when the requester's association is gone. JSON, e.g.
    # {"PACS": {"host": "10.0.0.5", "port": 104, "tenants": ["radiology"]}}
    dimse_peers: dict[str, Peer] = {}
    # Matches per Query call while a C-FIND streams its results.
    find_page_size: int = 200
    # Instances per C-MOVE/C-GET request (a DIMSE limit is 65535).
    max_retrieve_instances: int = 65535
    # Spool files of bucket objects on their way out (C-MOVE, C-GET with the
    # S3 backend; files in the objects folder are sent from where they lie);
    # empty: the system temp folder.
    retrieve_spool_dir: Path | None = None
    # DICOM TLS (PS3.15 B.1): set certificate and key to serve TLS on the
    # DIMSE port; with a CA file, clients must present a certificate it signed.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
