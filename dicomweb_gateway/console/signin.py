"""Sign-in and sign-out: with an API key (checked by auth_svc), or with the
OpenID Connect provider (oidc.py). Either way the session then carries the
credential, and auth_svc checks it on every request as it checks the API's."""

from __future__ import annotations

import logging
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from common import errors
from common.gen.dicomserver.v1 import auth_service_pb2 as auth_pb
from dicomweb_gateway.console.context import console, redirect, render, safe_next, session_of
from dicomweb_gateway.console.oidc import OidcError
from dicomweb_gateway.console.pages import _one, read_form
from dicomweb_gateway.console.session import Session, clear, save, set_cookie

log = logging.getLogger(__name__)

FLOW_COOKIE = "dicomserver_oidc"
FLOW_SECONDS = 600


async def _check(request: Request, cred: auth_pb.Credential, tenant: str) -> tuple[auth_pb.CheckResponse | None, str]:
    try:
        granted = await run_in_threadpool(console(request).auth.check, cred, auth_pb.ACTION_READ, tenant)
    except errors.Unauthenticated as exc:
        return None, f"Not signed in: {exc}."
    except errors.PermissionDenied as exc:
        return None, f"Not signed in: {exc}."
    except errors.InvalidArgument as exc:
        return None, f"Not signed in: {exc}."
    except errors.ServiceError:
        return None, "The authorization service is not answering; try again in a moment."
    return granted, ""


async def signin_page(request: Request) -> Response:
    return render(request, "signin.html", next=safe_next(request.query_params.get("next")), error="")


async def signin_api_key(request: Request) -> Response:
    form = await read_form(request)
    key = _one(form, "api_key")
    tenant = _one(form, "tenant")
    target = safe_next(_one(form, "next"))
    if not key:
        return render(request, "signin.html", status_code=400, next=target, error="Enter an API key.")
    granted, error = await _check(request, auth_pb.Credential(api_key=key), tenant)
    if granted is None:
        return render(request, "signin.html", status_code=401, next=target, error=error)
    session = Session(
        kind="api_key",
        credential=key,
        subject=granted.principal.subject,
        tenant=tenant,
        method="api_key",
        expires=time.time() + console(request).codec.max_age,
    )
    log.info("console sign-in with an API key (subject %s)", granted.principal.subject)
    response = redirect(target)
    save(response, request, console(request).codec, session)
    return response


def _callback_url(request: Request) -> str:
    c = console(request)
    if c.settings.public_url:
        origin = (
            c.settings.public_url[: -len(c.settings.base_path)]
            if c.settings.base_path and c.settings.public_url.endswith(c.settings.base_path)
            else c.settings.public_url
        )
        return origin.rstrip("/") + "/signin/oidc/callback"
    return str(request.url_for("oidc_callback"))


async def signin_oidc(request: Request) -> Response:
    c = console(request)
    if c.oidc is None:
        return render(
            request,
            "signin.html",
            status_code=404,
            next="/",
            error="Sign-in with an identity provider is not configured.",
        )
    target = safe_next(request.query_params.get("next"))
    try:
        url, flow = await run_in_threadpool(c.oidc.authorization_url, _callback_url(request))
    except OidcError as exc:
        return render(request, "signin.html", status_code=502, next=target, error=f"Sign-in is not available: {exc}.")
    flow["next"] = target
    flow["tenant"] = request.query_params.get("tenant", "")[:63]
    response = redirect(url)
    set_cookie(response, request, FLOW_COOKIE, c.codec.seal(flow), FLOW_SECONDS)
    return response


async def oidc_callback(request: Request) -> Response:
    c = console(request)
    flow = c.codec.unseal(request.cookies.get(FLOW_COOKIE), FLOW_SECONDS)
    params = request.query_params
    if c.oidc is None or flow is None:
        return render(
            request,
            "signin.html",
            status_code=400,
            next="/",
            error="This sign-in has expired or was not started here; start again.",
        )
    target = safe_next(flow.get("next"))

    def failed(status: int, message: str) -> Response:
        response = render(request, "signin.html", status_code=status, next=target, error=message)
        response.delete_cookie(FLOW_COOKIE, path="/")
        return response

    if params.get("state") != flow["state"]:
        return failed(400, "This sign-in does not match the one started here (state); start again.")
    if "error" in params:
        return failed(401, f"The identity provider refused: {params.get('error_description') or params['error']}.")
    code = params.get("code", "")
    if not code:
        return failed(400, "The identity provider sent no code.")
    try:
        tokens = await run_in_threadpool(c.oidc.exchange, code, flow)
    except OidcError as exc:
        return failed(401, f"Not signed in: {exc}.")
    access_token = str(tokens["access_token"])
    granted, error = await _check(request, auth_pb.Credential(bearer_token=access_token), flow.get("tenant", ""))
    if granted is None:
        return failed(401, error)
    expires = time.time() + float(tokens.get("expires_in") or c.codec.max_age)
    session = Session(
        kind="bearer",
        credential=access_token,
        subject=granted.principal.subject,
        tenant=flow.get("tenant", ""),
        method="oidc",
        expires=min(expires, time.time() + c.codec.max_age),
    )
    log.info("console sign-in with the identity provider (subject %s)", granted.principal.subject)
    response = redirect(target)
    save(response, request, c.codec, session)
    response.delete_cookie(FLOW_COOKIE, path="/")
    return response


async def signout(request: Request) -> Response:
    await read_form(request)
    was = session_of(request)
    response = redirect("/signin" if was.signed_in else "/")
    clear(response, request)
    return response
