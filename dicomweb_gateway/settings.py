from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import SecretStr, field_validator

from common.gen.dicomserver.v1 import metadata_service_pb2 as md_pb
from common.settings import CommonSettings

_POLICIES = {
    "overwrite": md_pb.DUPLICATE_POLICY_OVERWRITE,
    "keep_first": md_pb.DUPLICATE_POLICY_KEEP_FIRST,
    "reject": md_pb.DUPLICATE_POLICY_REJECT,
}


class GatewaySettings(CommonSettings):
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    # Where the DICOMweb resources live, e.g. /dicomweb/studies. "" for the root.
    base_path: str = "/dicomweb"
    # Absolute URLs in responses (RetrieveURL, BulkDataURI) start with this when
    # set, e.g. "https://pacs.example.org/dicomweb" behind a reverse proxy;
    # otherwise they are built from the request's scheme and Host.
    public_url: str = ""
    # Bytes one uploaded part may keep in RAM before spilling to a temp file.
    spool_max_memory: int = 8 * 1024 * 1024
    # Largest request body accepted (413 beyond).
    max_request_bytes: int = 4 * 1024 * 1024 * 1024
    # Largest single object in a STOW-RS request, as one part or as the whole
    # application/dicom body (413 beyond). 4 GiB: the most a DICOM value length says.
    max_part_bytes: int = 4 * 1024 * 1024 * 1024
    # Parts in one STOW-RS request (413 beyond), and bytes of one part's headers (400 beyond).
    max_parts: int = 10000
    max_part_header_bytes: int = 16 * 1024
    # QIDO-RS: a larger `limit` is lowered to this, with a Warning header
    # (PS3.18 lets a server return fewer); more query parameters, includefield names, characters
    # in one value or '*'/'?' wildcards in one value than these are a 400.
    qido_max_limit: int = 1000
    qido_max_params: int = 64
    qido_max_includefields: int = 256
    qido_max_value_length: int = 1024
    qido_max_wildcards: int = 64
    # Bytes of a query string, on every route: 414 beyond.
    max_query_string_bytes: int = 16 * 1024
    # HTTP access log lines (INFO). They contain UIDs and query strings, which
    # may name patients, so they are off by default.
    access_log: bool = False
    # What STOW-RS does with an instance whose SOP Instance UID exists.
    duplicate_policy: Literal["overwrite", "keep_first", "reject"] = "overwrite"
    # Origins whose web pages may call the API (CORS), e.g.
    # ["https://viewer.example.org"]; ["*"] allows any. Empty: no CORS headers.
    cors_origins: list[str] = []
    # Seconds a browser may cache a preflight answer.
    cors_max_age: int = 600
    # Smallest JSON body worth gzipping for clients that accept it.
    gzip_min_bytes: int = 1024
    # HTTPS: certificate and key (PEM) to serve TLS 1.2+ instead of plain
    # HTTP; with a CA file, clients must present a certificate it signed.
    http_tls_cert_file: Path | None = None
    http_tls_key_file: Path | None = None
    http_tls_ca_file: Path | None = None
    # Slow and greedy clients: seconds an idle keep-alive connection stays
    # open, seconds a request head (request line and headers) may take to
    # arrive (then the connection is closed), bytes of an unfinished request
    # head (400 beyond), and connections plus requests in progress (503 beyond).
    http_keep_alive_timeout: int = 5
    http_head_timeout: float = 20.0
    # Seconds a granted (credential, action, tenant) is reused without asking
    # auth_svc again; refusals are never reused. 0 asks for every request.
    # A revoked API key or a switched-on authentication holds after at most this.
    auth_cache_seconds: float = 2.0
    http_max_header_bytes: int = 64 * 1024
    http_max_concurrency: int = 1000
    # The web console at / and the OHIF viewer at /viewer (dicomweb_gateway/console).
    console_enabled: bool = True
    # Encrypts the console's session cookies; set it (the same on every
    # gateway replica) for sessions that outlive a restart. Unset: a random
    # secret per process.
    console_session_secret: SecretStr | None = None
    # Hours a console session lasts (an OpenID Connect session also ends with its token).
    console_session_hours: float = 8.0
    # The OHIF viewer's built dist/ (scripts/fetch_viewer puts it in viewer/dist).
    viewer_dir: Path = Path(__file__).resolve().parent.parent / "viewer" / "dist"
    # OpenID Connect sign-in for the console, offered when the JWKS URL and
    # the issuer are set (the same variables auth_svc checks tokens with).
    jwks_url: str = ""
    jwt_issuer: str = ""
    oidc_client_id: str = "dicomserver-console"
    # Only for a confidential client; PKCE protects the code either way.
    oidc_client_secret: SecretStr | None = None
    oidc_scopes: str = "openid"
    # Sent as the `resource` parameter (RFC 8707) when set: the API the
    # access token is for, e.g. the audience auth_svc checks.
    oidc_resource: str = ""

    @field_validator("base_path")
    @classmethod
    def _normalize_base_path(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            value = "/" + value
        return value

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @property
    def duplicate_policy_value(self) -> int:
        return _POLICIES[self.duplicate_policy]
