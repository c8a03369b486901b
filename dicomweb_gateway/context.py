"""What a handler needs besides the request: backends, settings, tenant, URLs."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from common.clients import MetadataClient, StorageClient
from common.ingest import IngestPipeline
from common.validation import InvalidValue, check_uid
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


def gateway(request: Request) -> Gateway:
    gw: Gateway = request.app.state.gateway
    return gw


def tenant_for(request: Request) -> str:
    """The tenant a request acts in. Authentication will derive it from the
    principal; until then every request uses the configured default."""
    return gateway(request).settings.default_tenant


def path_uid(request: Request, name: str, label: str) -> str:
    """A UID path parameter, validated so it can be used as a key (400 if not)."""
    try:
        return check_uid(request.path_params[name], label)
    except InvalidValue as exc:
        raise bad_request(str(exc)) from None


class Urls:
    """Absolute URLs of DICOMweb resources (RetrieveURL, Content-Location, BulkDataURI)."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    @classmethod
    def for_request(cls, request: Request) -> Urls:
        settings = gateway(request).settings
        if settings.public_url:
            return cls(settings.public_url)
        return cls(str(request.base_url).rstrip("/") + settings.base_path)

    def study(self, study: str) -> str:
        return f"{self.root}/studies/{study}"

    def series(self, study: str, series: str) -> str:
        return f"{self.study(study)}/series/{series}"

    def instance(self, study: str, series: str, sop: str) -> str:
        return f"{self.series(study, series)}/instances/{sop}"
