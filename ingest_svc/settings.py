from __future__ import annotations

from common.settings import CommonSettings


class IngestSettings(CommonSettings):
    dimse_host: str = "127.0.0.1"
    dimse_port: int = 11112
    ae_title: str = "DICOMSERVER"
    # Refuse associations addressed to another called AE title.
    require_called_ae_title: bool = True
    # Accept private and unknown SOP classes as storage.
    accept_unknown_sop_classes: bool = True
    # Largest PDU we receive; large PDUs are much faster on fast links.
    max_pdu_size: int = 1024 * 1024
    max_associations: int = 32
    # Seconds without traffic before an association is aborted.
    network_timeout: float = 60.0
    # Objects in memory up to this size; larger ones spill to a temp file.
    spool_max_memory: int = 8 * 1024 * 1024
