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


class ChecksumMismatch(ValueError):
    pass


class UnknownGrant(LookupError):
    """A commit names a write that is not (or no longer) staged."""


# A grant names its staging write: random, so one writer never meets another's.
_GRANT = re.compile(r"[0-9a-f]{32}")


def new_grant_id() -> str:
    return secrets.token_hex(16)


def check_grant(grant_id: str) -> str:
    if _GRANT.fullmatch(grant_id) is None:
        raise UnknownGrant("malformed grant id")
    return grant_id


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    modified_ns: int


@dataclass(frozen=True)
class WriteTarget:
    """Where a granted write goes: a staging file, or a presigned upload."""

    grant_id: str
    expires: float  # epoch seconds
    file_path: str = ""
    object_key: str = ""
    url: str = ""
    part_urls: tuple[str, ...] = ()
    part_size: int = 0


@dataclass(frozen=True)
class CommitRequest:
    """What a writer says it wrote under a grant."""

    grant_id: str
    ref: dicom_pb2.InstanceRef
    size: int
    crc32: int = 0
    etags: tuple[str, ...] = ()
    object_key: str = ""
    upload_id: str = ""


@dataclass(frozen=True)
class ReadTarget:
    key: str
    expires: float  # epoch seconds
    file_path: str = ""
    url: str = ""


@dataclass
class SweepReport:
    scanned: int = 0
    orphans_removed: int = 0
    staging_removed: int = 0


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
