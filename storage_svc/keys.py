"""Object keys: derived from the tenant and UIDs plus a generation, checked
by grammar before any backend sees them."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from common.gen.dicomserver.v1 import dicom_pb2
from common.validation import check_tenant, check_uid

# tenant/study/series/sop_generation.dcm — every part checked by its grammar,
# so a key can never climb out of the root or the bucket prefix. One file per
# object in the series folder: a new object creates no folder of its own.
_KEY = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}(/[0-9]+(\.[0-9]+)*){3}_[0-9a-f]{16}\.dcm")


class BadKey(ValueError):
    pass


class SizeMismatch(ValueError):
    pass


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified_ns: int


def derive_key(ref: dicom_pb2.InstanceRef) -> str:
    parts = [
        check_tenant(ref.tenant),
        check_uid(ref.study_instance_uid, "Study Instance UID"),
        check_uid(ref.series_instance_uid, "Series Instance UID"),
        check_uid(ref.sop_instance_uid, "SOP Instance UID"),
    ]
    return "/".join(parts) + f"_{secrets.token_hex(8)}.dcm"


def check_key(key: str) -> str:
    if len(key) > 300 or _KEY.fullmatch(key) is None:
        raise BadKey("malformed object key")
    return key
