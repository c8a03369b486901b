"""DICOM status codes, one list for both edges and the audit trail, and the
error that carries a refusal.

From PS3.7 Annex C (general), PS3.4 Annex B (Storage), Annex C (Query/
Retrieve) and PS3.18 Table 10.5.3-2 (STOW-RS). A code whose meaning depends
on the service is named once; the comment gives each meaning."""

from __future__ import annotations

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01  # C-FIND: optional keys not supported
PENDINGS = (PENDING, PENDING_WARNING)
CANCEL = 0xFE00
# Storage: coercion of data elements. C-GET/C-MOVE: sub-operations complete,
# one or more failures or warnings.
WARNING = 0xB000
ELEMENTS_DISCARDED = 0xB006
DATASET_MISMATCH_WARNING = 0xB007  # stored, though it does not match the SOP class
STORE_WARNINGS = (WARNING, ELEMENTS_DISCARDED, DATASET_MISMATCH_WARNING)

PROCESSING_FAILURE = 0x0110
DUPLICATE_INSTANCE = 0x0111
# DIMSE-N (storage commitment's N-ACTION, PS3.7 C.4.3.1.4).
NO_SUCH_INSTANCE = 0x0112
INVALID_ARGUMENT = 0x0115
INVALID_INSTANCE = 0x0117
CLASS_INSTANCE_CONFLICT = 0x0119
CLASS_NOT_SUPPORTED = 0x0122
NO_SUCH_ACTION = 0x0123
NOT_AUTHORIZED = 0x0124
RESOURCE_LIMITATION = 0x0213
OUT_OF_RESOURCES = 0xA700
SUB_OPERATIONS_FAILED = 0xA702  # C-GET/C-MOVE: out of resources, unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801
# Storage: data set does not match SOP class. C-FIND/C-GET/C-MOVE: identifier
# does not match SOP class.
DATASET_MISMATCH = 0xA900
# Storage: cannot understand. C-FIND/C-GET/C-MOVE: unable to process.
CANNOT_UNDERSTAND = 0xC000
# What pynetdicom answers when a handler raises, when a C-FIND answer cannot
# be encoded, and when more than 65535 sub-operations would be sent.
STORE_HANDLER_FAILED = 0xC211
FIND_FAILED, FIND_UNENCODABLE = 0xC311, 0xC312
GET_FAILED, GET_TOO_MANY = 0xC411, 0xC416
MOVE_FAILED, MOVE_TOO_MANY = 0xC511, 0xC516


class Rejected(Exception):
    """The object is refused: `status` is the DICOM status to report, `reason`
    says why in words a sender can act on."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


TRUNCATED = "object is truncated: an element ends before its stated length"
