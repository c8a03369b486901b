"""The Starlette application: routes under settings.base_path, backends on app.state."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Mount, Route

from common.audit import AuditLog
from common.blobs import BlobReader
from common.clients import (
    AuthClient,
    EventBusClient,
    IngestClient,
    MetadataClient,
    RoutingClient,
    StorageClient,
    channel,
)
from common.exposure import ExposedWithoutAuth, require_auth_unless_loopback
from common.ingest import IngestPipeline
from dicomweb_gateway import (
    changefeed,
    deidentify,
    delete,
    frames,
    health,
    openapi,
    qido,
    render,
    routing,
    stow,
    wado,
    wado_uri,
)
from dicomweb_gateway.audit_trail import AuditSink
from dicomweb_gateway.auth import Authentication
from dicomweb_gateway.console import ConsoleAuthentication, viewer_missing
from dicomweb_gateway.console import is_form_path as console_is_form_path
from dicomweb_gateway.console import is_open as console_is_open
from dicomweb_gateway.console import is_page as console_is_page
from dicomweb_gateway.console import routes as console_routes
from dicomweb_gateway.console.context import Console
from dicomweb_gateway.console.oidc import OpenIdClient
from dicomweb_gateway.console.session import SessionCodec, SessionMiddleware
from dicomweb_gateway.console.viewer import Viewer, ViewerApp
from dicomweb_gateway.context import Gateway
from dicomweb_gateway.errors import EXCEPTION_HANDLERS
from dicomweb_gateway.limits import RequestLimits
from dicomweb_gateway.objects import LayoutCache
from dicomweb_gateway.observability import RequestObservability
from dicomweb_gateway.ranges import NoRanges
from dicomweb_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_STUDY = "/studies/{study}"
_SERIES = _STUDY + "/series/{series}"
_INSTANCE = _SERIES + "/instances/{sop}"


def routes() -> list[BaseRoute]:
    return [
        # STOW-RS
        Route("/studies", stow.store_instances, methods=["POST"]),
        Route("/deidentify", deidentify.deidentify, methods=["POST"]),
        Route(_STUDY, stow.store_instances, methods=["POST"]),
        # QIDO-RS
        Route("/studies", qido.search_studies, methods=["GET"]),
        Route("/series", qido.search_series, methods=["GET"]),
        Route("/instances", qido.search_instances, methods=["GET"]),
        Route(_STUDY + "/series", qido.search_series, methods=["GET"]),
        Route(_STUDY + "/instances", qido.search_instances, methods=["GET"]),
        Route(_SERIES + "/instances", qido.search_instances, methods=["GET"]),
        # WADO-RS
        Route(_STUDY, wado.retrieve, methods=["GET"]),
        Route(_SERIES, wado.retrieve, methods=["GET"]),
        Route(_INSTANCE, wado.retrieve, methods=["GET"]),
        Route(_STUDY + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_SERIES + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_INSTANCE + "/metadata", wado.retrieve_metadata, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}", frames.retrieve_frames, methods=["GET"]),
        Route(_INSTANCE + "/bulkdata/{path:path}", frames.retrieve_bulkdata, methods=["GET"]),
        # Rendered resources and thumbnails
        Route(_INSTANCE + "/rendered", render.rendered_instance, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/rendered", render.rendered_instance, methods=["GET"]),
        Route(_INSTANCE + "/thumbnail", render.thumbnail_instance, methods=["GET"]),
        Route(_INSTANCE + "/frames/{frames}/thumbnail", render.thumbnail_instance, methods=["GET"]),
        Route(_SERIES + "/rendered", render.rendered_many, methods=["GET"]),
        Route(_STUDY + "/rendered", render.rendered_many, methods=["GET"]),
        Route(_SERIES + "/thumbnail", render.thumbnail_many, methods=["GET"]),
        Route(_STUDY + "/thumbnail", render.thumbnail_many, methods=["GET"]),
        # Delete
        Route(_STUDY, delete.delete_resource, methods=["DELETE"]),
        Route(_SERIES, delete.delete_resource, methods=["DELETE"]),
        Route(_INSTANCE, delete.delete_resource, methods=["DELETE"]),
        # Change feed
        Route("/changefeed", changefeed.read, methods=["GET"]),
        Route("/changefeed/latest", changefeed.latest, methods=["GET"]),
        # Routing: send to a destination, dead letters (the event bus's RoutingService)
        Route("/routing/destinations", routing.list_destinations, methods=["GET"]),
        Route("/routing/destinations/{name}" + _STUDY, routing.send, methods=["POST"]),
        Route("/routing/destinations/{name}" + _SERIES, routing.send, methods=["POST"]),
        Route("/routing/destinations/{name}" + _INSTANCE, routing.send, methods=["POST"]),
        Route("/routing/sends/{id}", routing.get_send, methods=["GET"]),
        Route("/routing/dead-letters", routing.list_dead_letters, methods=["GET"]),
        Route("/routing/dead-letters/replay", routing.replay_dead_letters, methods=["POST"]),
        # WADO-URI and the API description
        Route("/wado", wado_uri.wado_uri, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint(routes), methods=["GET"]),
    ]


def _console(
    settings: GatewaySettings,
    storage: StorageClient,
    metadata: MetadataClient,
    auth: AuthClient,
    owned: list[grpc.Channel],
) -> Console:
    owned.append(channel(settings.ingest_addr))
    ingest = IngestClient(owned[-1])
    owned.append(channel(settings.eventbus_addr))
    eventbus = EventBusClient(owned[-1])
    secret = settings.console_session_secret.get_secret_value() if settings.console_session_secret else None
    viewer = Viewer(settings.viewer_dir, settings.public_url or settings.base_path)
    console = Console(
        settings,
        storage,
        metadata,
        auth,
        ingest,
        eventbus,
        SessionCodec(secret, settings.console_session_hours * 3600),
        viewer,
        OpenIdClient.from_settings(settings),
    )
    console.viewer_app = ViewerApp(viewer, viewer_missing)
    return console


def create_app(
    settings: GatewaySettings,
    storage: StorageClient | None = None,
    metadata: MetadataClient | None = None,
    auth: AuthClient | None = None,
    audit: AuditSink | None = None,
    routing_client: RoutingClient | None = None,
) -> Starlette:
    """Clients not passed in are built from the settings' addresses; the app
    then owns their channels and closes them on shutdown."""
    owned: list[grpc.Channel] = []
    if storage is None:
        owned.append(channel(settings.storage_addr))
        storage = StorageClient(owned[-1])
    if metadata is None:
        owned.append(channel(settings.metadata_addr))
        metadata = MetadataClient(owned[-1])
    if auth is None:
        owned.append(channel(settings.auth_addr))
        auth = AuthClient(owned[-1])
    if audit is None:
        audit = AuditLog.from_settings(settings, metadata, edge="dicomweb")
    if routing_client is None:
        owned.append(channel(settings.eventbus_addr))
        routing_client = RoutingClient(owned[-1])

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Refuses to serve a network address while authentication is off.
        try:
            await run_in_threadpool(require_auth_unless_loopback, auth, {"HTTP listener": settings.http_host})
        except ExposedWithoutAuth as exc:
            log.error("%s", exc)
            raise
        try:
            yield
        finally:
            await run_in_threadpool(audit.close, settings.shutdown_grace)
            for ch in owned:
                ch.close()

    probes: list[BaseRoute] = [
        Route("/healthz", health.healthz, methods=["GET"]),
        Route("/readyz", health.readyz, methods=["GET"]),
    ]
    console = _console(settings, storage, metadata, auth, owned) if settings.console_enabled else None
    app_routes: list[BaseRoute] = (
        probes
        + (console_routes(console.viewer_app) if console else [])
        + ([Mount(settings.base_path, routes=routes())] if settings.base_path else routes())
    )
    middleware = [Middleware(RequestObservability)]
    # CORS outside authentication, so that a browser can read a 401.
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=[
                    "Content-Location",
                    "Content-Type",
                    "Content-Encoding",
                    "Warning",
                    "Location",
                    "X-Request-ID",
                ],
                max_age=settings.cors_max_age,
            )
        )
    middleware.append(
        Middleware(
            RequestLimits,
            max_query_string_bytes=settings.max_query_string_bytes,
            max_request_bytes=settings.max_request_bytes,
        )
    )
    middleware.append(Middleware(NoRanges, base_path=settings.base_path))
    open_paths = frozenset({"/healthz", "/readyz", settings.base_path + "/openapi.json"})
    if console is None:
        middleware.append(
            Middleware(
                Authentication,
                auth=auth,
                audit=audit,
                base_path=settings.base_path,
                open_paths=open_paths,
                cache_seconds=settings.auth_cache_seconds,
            )
        )
    else:
        # The console's session lends its credential to requests without one,
        # then the same authentication decides; refused pages go to sign in.
        middleware.append(
            Middleware(
                SessionMiddleware, codec=console.codec, is_page=console_is_page, is_form_path=console_is_form_path
            )
        )
        middleware.append(
            Middleware(
                ConsoleAuthentication,
                auth=auth,
                audit=audit,
                base_path=settings.base_path,
                open_paths=open_paths,
                cache_seconds=settings.auth_cache_seconds,
                is_open=console_is_open,
                page=console_is_page,
            )
        )
    app = Starlette(
        routes=app_routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    reader = BlobReader(storage)
    app.state.console = console
    app.state.auth = auth  # the de-identification route checks the target tenant too
    app.state.gateway = Gateway(
        settings, storage, metadata, IngestPipeline(storage, metadata), LayoutCache(reader), reader, routing_client
    )
    return app
