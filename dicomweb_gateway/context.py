"""What a handler needs besides the request: backends, settings, tenant, URLs."""

from __future__ import annotations

import json
from dataclasses import dataclass

from starlette.requests import Request

from common.blobs import BlobReader
from common.clients import MetadataClient, RoutingClient, StorageClient
from common.ingest import IngestPipeline
from common.validation import InvalidValue, check_uid
from dicomweb_gateway.auth import Access
from dicomweb_gateway.errors import bad_request
from dicomweb_gateway.objects import LayoutCache
from dicomweb_gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Gateway:
    settings: GatewaySettings
    storage: StorageClient
    metadata: MetadataClient
    pipeline: IngestPipeline
    layouts: LayoutCache
    # Object bytes are read here, where storage grants (files, presigned URLs).
    reader: BlobReader
    # The event bus's RoutingService (dicomweb_gateway/routing.py).
    routing: RoutingClient | None = None


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def access(request: Request) -> Access:
    """What auth_svc granted the request. Routes behind the authentication
    middleware always have it; anything else is a wiring bug, so fail closed."""
    granted: Access | None = request.scope.get("access")
    if granted is None:
        raise RuntimeError("a DICOMweb route was reached without authentication")
    return granted


def tenant_for(request: Request) -> str:
    """The tenant the request acts in, as auth_svc granted it."""
    return access(request).tenant


def path_uid(request: Request, name: str, label: str) -> str:
    """A UID path parameter, validated so it can be used as a key (400 if not)."""
    try:
        return check_uid(request.path_params[name], label)
    except InvalidValue as exc:
        raise bad_request(str(exc)) from None


ROOT_RELATIVE_BULKDATA = b'"BulkDataURI":"studies/'


class Urls:
    """Absolute URLs of DICOMweb resources (RetrieveURL, Content-Location, BulkDataURI)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    @classmethod
    def for_request(cls, request: Request) -> Urls:
        settings = gateway(request).settings
        prefix = access(request).path_prefix
        if settings.public_url:
            return cls(settings.public_url + prefix)
        return cls(str(request.base_url).rstrip("/") + settings.base_path + prefix)

    def study(self, study: str) -> str:
        return f"{self.root}/studies/{study}"

    def series(self, study: str, series: str) -> str:
        return f"{self.study(study)}/series/{series}"

    def instance(self, study: str, series: str, sop: str) -> str:
        return f"{self.series(study, series)}/instances/{sop}"

    def absolute_bulkdata_uris(self, blob: bytes) -> bytes:
        """DICOM JSON (one object or a whole array) with absolute BulkDataURIs.
        The index stores them relative to the DICOMweb root
        ("studies/…/bulkdata/7FE00010"): one replace over the bytes, no parse."""
        if ROOT_RELATIVE_BULKDATA in blob:
            root = json.dumps(self.root + "/studies/")[1:-1].encode("utf-8")
            blob = blob.replace(ROOT_RELATIVE_BULKDATA, b'"BulkDataURI":"' + root)
        return blob
