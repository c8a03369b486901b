"""STOW-RS to a DICOMweb endpoint (PS3.18 10.5): one multipart/related
request per batch, each part an object's stored Part 10 bytes streamed from
its file, with a bearer token or an API key read from a secret for every
request (a rotated secret is used at once; it is never logged).

The answer says per instance what happened: 200 all stored, 202 some
failed, 409 none stored; the failed ones are listed in the Failed SOP
Sequence with a Failure Reason. Any other answer, or no answer, means the
destination is down for this batch."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator, Sequence

import urllib3

from eventbus.routing.config import DicomwebDestination
from eventbus.routing.objects import ObjectFile
from eventbus.routing.sending import Outcome

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"


class SecretUnavailable(Exception):
    pass


class StowSender:
    def __init__(self, destination: DicomwebDestination) -> None:
        self.destination = destination
        kwargs = {"ca_certs": str(destination.ca_file)} if destination.ca_file is not None else {}
        self._http = urllib3.PoolManager(maxsize=2, retries=False, **kwargs)  # type: ignore[arg-type]

    def _auth_headers(self) -> dict[str, str]:
        dest = self.destination
        if dest.auth == "none":
            return {}
        try:
            if dest.token_file is not None:
                secret = dest.token_file.read_text().strip()
            else:
                secret = os.environ.get(dest.token_env or "", "").strip()
        except OSError as exc:
            raise SecretUnavailable(f"the secret file cannot be read ({exc.strerror or type(exc).__name__})") from None
        if not secret:
            raise SecretUnavailable("the secret is empty or not set")
        if dest.auth == "bearer":
            return {"Authorization": f"Bearer {secret}"}
        return {dest.api_key_header: secret}

    def send(self, objects: Sequence[ObjectFile], stop: threading.Event) -> Outcome:
        outcome = Outcome()
        sendable = [o for o in objects if o.path is not None]
        for o in objects:
            if o.path is None:
                outcome.results[o.location.object_key] = o.error
        if not sendable or stop.is_set():
            return outcome
        try:
            auth = self._auth_headers()
        except SecretUnavailable as exc:
            outcome.down = str(exc)
            return outcome
        boundary = uuid.uuid4().hex
        heads = [f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() for _ in sendable]
        tail = f"--{boundary}--\r\n".encode()
        length = sum(len(h) + o.size + 2 for h, o in zip(heads, sendable, strict=False)) + len(tail)
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Content-Length": str(length),
            "Accept": "application/dicom+json",
            **auth,
        }
        try:
            resp = self._http.request(
                "POST",
                f"{self.destination.url}/studies",
                body=_body(heads, sendable, tail),
                headers=headers,
                timeout=urllib3.Timeout(connect=self.destination.timeout, read=self.destination.timeout),
                preload_content=True,
                chunked=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            outcome.down = f"no answer from the endpoint ({type(exc).__name__})"
            return outcome
        if resp.status not in (200, 202, 409):
            outcome.down = f"the endpoint answered HTTP {resp.status}"
            return outcome
        failed = _failed(resp.data)
        for o in sendable:
            uid, key = o.location.ref.sop_instance_uid, o.location.object_key
            if uid in failed:
                outcome.results[key] = (
                    f"STOW-RS failed with reason 0x{failed[uid]:04X}" if failed[uid] else "STOW-RS failed"
                )
            elif resp.status == 409:
                outcome.results[key] = "STOW-RS answered 409 (nothing stored)"
            else:
                outcome.results[key] = None
        return outcome


def _body(heads: list[bytes], objects: Sequence[ObjectFile], tail: bytes) -> Iterator[bytes]:
    for head, obj in zip(heads, objects, strict=False):
        yield head
        assert obj.path is not None
        with open(obj.path, "rb") as f:
            sent = 0
            while sent < obj.size:
                chunk = f.read(min(CHUNK, obj.size - sent))
                if not chunk:
                    raise OSError("the object file is shorter than it was")
                sent += len(chunk)
                yield chunk
        yield b"\r\n"
    yield tail


def _failed(data: bytes) -> dict[str, int]:
    """SOP Instance UID -> Failure Reason of the Failed SOP Sequence of a STOW-RS answer."""
    try:
        doc = json.loads(data) if data else {}
    except ValueError:
        return {}
    out: dict[str, int] = {}
    if not isinstance(doc, dict):
        return out
    for item in (doc.get(FAILED_SOP_SEQUENCE) or {}).get("Value") or []:
        uid = ((item.get(REFERENCED_SOP_INSTANCE_UID) or {}).get("Value") or [""])[0]
        reason = ((item.get(FAILURE_REASON) or {}).get("Value") or [0])[0]
        if uid:
            out[str(uid)] = int(reason) if isinstance(reason, int) else 0
    return out
