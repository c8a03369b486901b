"""The routing settings: destinations by name and the rules that send to
them, as JSON in DICOMSERVER_ROUTING_DESTINATIONS and _ROUTING_RULES.

Tenant walls are checked here, at start: a destination is bound to the
tenants it lists, and a rule may only name destinations bound to its own
tenant. Rule match values use QIDO-RS syntax (dicomcore.matching), the same
parser as every query."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.validation import InvalidValue, check_tenant, is_uid
from dicomcore import matching

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SOP_INSTANCE_UID = "00080018"
MODALITY = "00080060"


class _Retry(BaseModel):
    """Per-destination overrides of the routing_* defaults."""

    max_attempts: int | None = Field(default=None, ge=1)
    backoff: float | None = Field(default=None, ge=0)
    max_backoff: float | None = Field(default=None, ge=0)
    # Instances per association or STOW-RS request.
    batch: int | None = Field(default=None, ge=1, le=500)


class DimseDestination(_Retry):
    """A DIMSE peer that takes C-STORE."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["dimse"]
    host: str
    port: int = Field(ge=1, le=65535)
    # The peer's (called) AE title.
    ae_title: str = Field(min_length=1, max_length=16)
    # Ours; default routing_ae_title.
    calling_ae_title: str | None = Field(default=None, min_length=1, max_length=16)
    tenants: list[str] = Field(min_length=1)
    # Seconds for connecting, association negotiation and each response.
    timeout: float = Field(default=30.0, gt=0)

    @property
    def address(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


class DicomwebDestination(_Retry):
    """A DICOMweb endpoint that takes STOW-RS at {url}/studies."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["dicomweb"]
    # The service root, e.g. https://archive.example.org/dicomweb
    url: str = Field(pattern=r"^https?://")
    # "bearer": Authorization: Bearer <secret>; "api_key": <api_key_header>: <secret>.
    auth: Literal["none", "bearer", "api_key"] = "none"
    # Where the secret is: a file (a mounted Kubernetes Secret; read for every
    # request, so a rotated secret is used at once) or an environment variable.
    token_file: Path | None = None
    token_env: str | None = None
    api_key_header: str = "X-API-Key"
    # CA bundle for an https URL signed by a private CA (default: the system's).
    ca_file: Path | None = None
    tenants: list[str] = Field(min_length=1)
    timeout: float = Field(default=60.0, gt=0)

    @property
    def address(self) -> str:
        return self.url

    @model_validator(mode="after")
    def _secret_named(self) -> DicomwebDestination:
        if self.auth != "none" and (self.token_file is None) == (self.token_env is None):
            raise ValueError(f"auth '{self.auth}' needs the secret from exactly one of token_file and token_env")
        if self.auth == "none" and (self.token_file is not None or self.token_env is not None):
            raise ValueError("a token_file or token_env is only used with auth 'bearer' or 'api_key'")
        self.url = self.url.rstrip("/")
        return self


Destination = Annotated[DimseDestination | DicomwebDestination, Field(discriminator="type")]


class Rule(BaseModel):
    """Which instances go where. Every condition given must hold; a list
    condition holds when any of its values does."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME)
    tenant: str
    destinations: list[str] = Field(min_length=1)
    # The calling AE title of the association that stored the instance
    # (instances stored through DICOMweb have none and never match).
    calling_ae_titles: list[str] = []
    modalities: list[str] = []
    sop_classes: list[str] = []
    # Any indexed attribute, by keyword or tag, with a QIDO-RS matching
    # value: {"StudyDescription": "*HEAD*", "StudyDate": "20250101-"}.
    match: dict[str, str] = {}
    # "instances": each matching instance as soon as it is stored.
    # "studies": the whole study (every instance), once no instance of it has
    # been stored for quiet_seconds after one matched.
    send: Literal["instances", "studies"] = "instances"
    quiet_seconds: float = Field(default=60.0, ge=0)

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        try:
            return check_tenant(value)
        except InvalidValue as exc:
            raise ValueError(str(exc)) from None

    @field_validator("sop_classes")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not is_uid(v)]
        if bad:
            raise ValueError(f"not a SOP Class UID: {bad[0][:64]}")
        return values

    @field_validator("calling_ae_titles", "modalities")
    @classmethod
    def _stripped(cls, values: list[str]) -> list[str]:
        return [v.strip() for v in values]

    @field_validator("match")
    @classmethod
    def _parsable(cls, match: dict[str, str]) -> dict[str, str]:
        for key, value in match.items():
            try:
                tag = matching.resolve_tag(key)
                matching.parse(tag, value)
            except InvalidValue as exc:
                raise ValueError(str(exc)) from None
            if matching.tag_hex(tag) == SOP_INSTANCE_UID:
                raise ValueError("a rule cannot match on SOPInstanceUID")
        return match

    @property
    def filters(self) -> list[md_pb.Filter]:
        """The match as query filters (universal ones dropped: they filter nothing)."""
        out = []
        for key, value in self.match.items():
            flt = matching.parse(matching.resolve_tag(key), value)
            if flt.WhichOneof("constraint") != "universal":
                out.append(flt)
        return out

    @property
    def needs_index(self) -> bool:
        """Whether matching needs the index (the event alone does not say)."""
        return bool(self.modalities or self.filters)

    def admits(self, tenant: str, calling_ae_title: str, sop_class: str) -> bool:
        """The conditions an InstanceStored event answers by itself."""
        return (
            tenant == self.tenant
            and (not self.calling_ae_titles or calling_ae_title in self.calling_ae_titles)
            and (not self.sop_classes or sop_class in self.sop_classes)
        )


def check_walls(destinations: dict[str, DimseDestination | DicomwebDestination], rules: list[Rule]) -> None:
    """Raises ValueError unless every rule names known destinations bound to
    its tenant, rule names are unique and destination tenants are valid."""
    for name, dest in destinations.items():
        if re.fullmatch(NAME, name) is None:
            raise ValueError(f"destination name '{name[:64]}' must be 1-64 letters, digits, '.', '_' or '-'")
        for tenant in dest.tenants:
            try:
                check_tenant(tenant)
            except InvalidValue as exc:
                raise ValueError(f"destination {name}: {exc}") from None
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"two routing rules are named {rule.name}")
        seen.add(rule.name)
        for dest_name in rule.destinations:
            target = destinations.get(dest_name)
            if target is None:
                raise ValueError(f"rule {rule.name}: no destination named {dest_name[:64]}")
            if rule.tenant not in target.tenants:
                raise ValueError(f"rule {rule.name}: destination {dest_name} is not bound to tenant {rule.tenant}")
