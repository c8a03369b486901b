"""DICOM statuses for objects this package refuses, and the error that carries them.

The values are those of common.ingest (PS3.4 Annex B, PS3.18 Table 10.5.3-2),
repeated here so that dicomcore depends on nothing else in the archive."""

from __future__ import annotations

DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


class Rejected(Exception):
    """The object is refused: `status` is the DICOM status to report, `reason`
    says why in words a sender can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


TRUNCATED = "object is truncated: an element ends before its stated length"
