"""Hand-written clients over the generated stubs. Callers get plain Python
values and domain exceptions (common.errors), never raw stubs or RpcErrors."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO, ParamSpec, TypeVar

import grpc

from common import observability, tls
from common.errors import from_rpc_error
from common.gen.dicomserver.v1 import (
    auth_service_pb2 as auth_pb,
)
from common.gen.dicomserver.v1 import (
    auth_service_pb2_grpc as auth_grpc,
)
from common.gen.dicomserver.v1 import (
    dicom_pb2,
    events_pb2,
)
from common.gen.dicomserver.v1 import (
    eventbus_service_pb2 as eb_pb,
)
from common.gen.dicomserver.v1 import (
    eventbus_service_pb2_grpc as eb_grpc,
)
from common.gen.dicomserver.v1 import (
    ingest_service_pb2 as ingest_pb,
)
from common.gen.dicomserver.v1 import (
    ingest_service_pb2_grpc as ingest_grpc,
)
from common.gen.dicomserver.v1 import (
    metadata_service_pb2 as md_pb,
)
from common.gen.dicomserver.v1 import (
    metadata_service_pb2_grpc as md_grpc,
)
from common.gen.dicomserver.v1 import (
    routing_service_pb2 as routing_pb,
)
from common.gen.dicomserver.v1 import (
    routing_service_pb2_grpc as routing_grpc,
)
from common.gen.dicomserver.v1 import (
    storage_service_pb2 as st_pb,
)
from common.gen.dicomserver.v1 import (
    storage_service_pb2_grpc as st_grpc,
)
from common.grpc_server import CHANNEL_OPTIONS
from common.settings import CommonSettings

CHUNK = 1024 * 1024
P = ParamSpec("P")
R = TypeVar("R")


def _translate(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    return wrapper


def channel(address: str, settings: CommonSettings | None = None) -> grpc.Channel:
    """A channel to another service: mutual TLS when the grpc_tls_* settings
    are set (those of `settings`, else this process's environment), plain
    otherwise; a half-configured trio raises common.tls.TLSConfigError."""
    credentials = tls.grpc_channel_credentials(settings if settings is not None else CommonSettings())
    if credentials is None:
        raw = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        raw = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return grpc.intercept_channel(raw, observability.ClientInterceptor())


def read_chunks(f: BinaryIO, size: int = CHUNK) -> Iterator[bytes]:
    while chunk := f.read(size):
        yield chunk


class StorageClient:
    def __init__(self, ch: grpc.Channel) -> None:
        self._stub = st_grpc.StorageServiceStub(ch)

    @_translate
    def put(self, ref: dicom_pb2.InstanceRef, chunks: Iterable[bytes], expected_size: int = 0) -> st_pb.PutResponse:
        def requests() -> Iterator[st_pb.PutRequest]:
            yield st_pb.PutRequest(header=st_pb.PutHeader(ref=ref, expected_size=expected_size))
            for chunk in chunks:
                for i in range(0, len(chunk), CHUNK):
                    yield st_pb.PutRequest(chunk=chunk[i : i + CHUNK])

        resp: st_pb.PutResponse = self._stub.Put(requests())
        return resp

    def get(self, object_key: str, offset: int = 0, length: int = 0) -> Iterator[bytes]:
        """Yields the object's bytes; errors surface on first iteration."""
        try:
            for resp in self._stub.Get(st_pb.GetRequest(object_key=object_key, offset=offset, length=length)):
                yield resp.chunk
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def get_bytes(self, object_key: str) -> bytes:
        return b"".join(self.get(object_key))

    @_translate
    def stat(self, object_key: str) -> st_pb.StatResponse:
        resp: st_pb.StatResponse = self._stub.Stat(st_pb.StatRequest(object_key=object_key))
        return resp

    @_translate
    def delete(self, object_key: str) -> bool:
        resp: st_pb.DeleteResponse = self._stub.Delete(st_pb.DeleteRequest(object_key=object_key))
        return resp.deleted

    @_translate
    def grant_write(
        self, count: int = 1, ref: dicom_pb2.InstanceRef | None = None, size: int = 0
    ) -> st_pb.GrantWriteResponse:
        resp: st_pb.GrantWriteResponse = self._stub.GrantWrite(st_pb.GrantWriteRequest(count=count, ref=ref, size=size))
        return resp

    @_translate
    def commit_write(self, request: st_pb.CommitWriteRequest) -> st_pb.CommitWriteResponse:
        resp: st_pb.CommitWriteResponse = self._stub.CommitWrite(request)
        return resp

    @_translate
    def commit_writes(self, requests: Iterable[st_pb.CommitWriteRequest]) -> list[st_pb.CommitResult]:
        return list(self._stub.CommitWrites(st_pb.CommitWritesRequest(writes=list(requests))).results)

    @_translate
    def grant_read(self, object_keys: Iterable[str]) -> list[st_pb.ReadGrant]:
        return list(self._stub.GrantRead(st_pb.GrantReadRequest(object_keys=list(object_keys))).grants)

    @_translate
    def sweep(self, min_age_seconds: int = 0, timeout: float = 600.0) -> st_pb.SweepResponse:
        resp: st_pb.SweepResponse = self._stub.Sweep(
            st_pb.SweepRequest(min_age_seconds=min_age_seconds), timeout=timeout
        )
        return resp


class MetadataClient:
    def __init__(self, ch: grpc.Channel) -> None:
        self._stub = md_grpc.MetadataServiceStub(ch)

    @_translate
    def index(
        self,
        records: Iterable[md_pb.InstanceRecord],
        policy: md_pb.DuplicatePolicy.ValueType = md_pb.DUPLICATE_POLICY_OVERWRITE,
    ) -> list[md_pb.IndexResult]:
        resp = self._stub.IndexInstances(md_pb.IndexInstancesRequest(records=records, duplicate_policy=policy))
        return list(resp.results)

    @_translate
    def query(self, request: md_pb.QueryRequest, timeout: float | None = None) -> md_pb.QueryResponse:
        resp: md_pb.QueryResponse = self._stub.Query(request, timeout=timeout)
        return resp

    @_translate
    def get_metadata(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[bytes]:
        req = md_pb.GetMetadataRequest(
            tenant=tenant, study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop
        )
        return list(self._stub.GetMetadata(req).instances)

    @_translate
    def locate(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        req = md_pb.LocateInstancesRequest(
            tenant=tenant, study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop
        )
        return list(self._stub.LocateInstances(req).locations)

    @_translate
    def locate_each(self, tenant: str, sop_uids: Iterable[str]) -> list[dicom_pb2.InstanceLocation]:
        """The instances among `sop_uids` that exist; unknown ones are left out."""
        req = md_pb.LocateInstancesRequest(tenant=tenant, sop_instance_uids=list(sop_uids))
        return list(self._stub.LocateInstances(req).locations)

    @_translate
    def delete(self, tenant: str, study: str, series: str = "", sop: str = "") -> list[dicom_pb2.InstanceLocation]:
        req = md_pb.DeleteInstancesRequest(
            tenant=tenant, study_instance_uid=study, series_instance_uid=series, sop_instance_uid=sop
        )
        return list(self._stub.DeleteInstances(req).removed)

    @_translate
    def record_audit(self, records: Iterable[events_pb2.AuditRecord], timeout: float = 10.0) -> None:
        self._stub.RecordAudit(md_pb.RecordAuditRequest(records=list(records)), timeout=timeout)

    @_translate
    def referenced_objects(self, object_keys: Iterable[str]) -> list[str]:
        """The keys among `object_keys` that an index row points to."""
        req = md_pb.ReferencedObjectsRequest(object_keys=list(object_keys))
        return list(self._stub.ReferencedObjects(req).object_keys)

    @_translate
    def read_outbox(self, after: int, limit: int, timeout: float = 30.0) -> md_pb.ReadOutboxResponse:
        """Outbox events after sequence `after`, oldest first, at most `limit`."""
        resp: md_pb.ReadOutboxResponse = self._stub.ReadOutbox(
            md_pb.ReadOutboxRequest(after_sequence=after, limit=limit), timeout=timeout
        )
        return resp

    @_translate
    def refresh_metadata(self, tenant: str, study: str, series: str = "", timeout: float = 30.0) -> int:
        """Recomputes the stored /metadata of a series (or every series of a study); returns how many."""
        req = md_pb.RefreshMetadataRequest(tenant=tenant, study_instance_uid=study, series_instance_uid=series)
        return int(self._stub.RefreshMetadata(req, timeout=timeout).series_refreshed)

    @_translate
    def read_outbox_latest(self, timeout: float = 10.0) -> int:
        """The newest outbox sequence."""
        req = md_pb.ReadOutboxRequest(after_sequence=2**62, limit=1)
        return int(self._stub.ReadOutbox(req, timeout=timeout).latest_sequence)

    @_translate
    def statistics(self, tenants: Iterable[str], days: int = 0, timeout: float = 30.0) -> md_pb.GetStatisticsResponse:
        req = md_pb.GetStatisticsRequest(tenants=list(tenants), days=days)
        resp: md_pb.GetStatisticsResponse = self._stub.GetStatistics(req, timeout=timeout)
        return resp

    @_translate
    def replace_object(self, record: md_pb.InstanceRecord, expected_object_key: str) -> md_pb.ReplaceObjectResponse:
        """Points the record's instance at its (converted) object if it still points at `expected_object_key`."""
        resp: md_pb.ReplaceObjectResponse = self._stub.ReplaceObject(
            md_pb.ReplaceObjectRequest(record=record, expected_object_key=expected_object_key)
        )
        return resp

    @_translate
    def read_change_feed(self, tenant: str, after: int = 0, limit: int = 100) -> md_pb.ReadChangeFeedResponse:
        req = md_pb.ReadChangeFeedRequest(tenant=tenant, after_sequence=after, limit=limit)
        resp: md_pb.ReadChangeFeedResponse = self._stub.ReadChangeFeed(req)
        return resp


class AuthClient:
    def __init__(self, ch: grpc.Channel) -> None:
        self._stub = auth_grpc.AuthServiceStub(ch)

    @_translate
    def authenticate(self, request: auth_pb.AuthenticateRequest) -> auth_pb.Principal:
        resp: auth_pb.AuthenticateResponse = self._stub.Authenticate(request)
        return resp.principal

    @_translate
    def authorize(
        self, principal: auth_pb.Principal, action: auth_pb.Action.ValueType, tenant: str
    ) -> auth_pb.AuthorizeResponse:
        req = auth_pb.AuthorizeRequest(principal=principal, action=action, tenant=tenant)
        resp: auth_pb.AuthorizeResponse = self._stub.Authorize(req)
        return resp

    @_translate
    def check(
        self,
        credential: auth_pb.Credential | None,
        action: auth_pb.Action.ValueType,
        tenant: str = "",
        timeout: float = 10.0,
    ) -> auth_pb.CheckResponse:
        """The principal and the tenant it acts in; raises Unauthenticated,
        PermissionDenied or InvalidArgument (common.errors) when refused."""
        req = auth_pb.CheckRequest(credential=credential, action=action, tenant=tenant)
        resp: auth_pb.CheckResponse = self._stub.Check(req, timeout=timeout)
        return resp

    @_translate
    def describe_policy(self, timeout: float = 10.0) -> auth_pb.DescribePolicyResponse:
        req = auth_pb.DescribePolicyRequest()
        resp: auth_pb.DescribePolicyResponse = self._stub.DescribePolicy(req, timeout=timeout)
        return resp

    @_translate
    def create_api_key(self, request: auth_pb.CreateApiKeyRequest) -> auth_pb.CreateApiKeyResponse:
        resp: auth_pb.CreateApiKeyResponse = self._stub.CreateApiKey(request)
        return resp

    @_translate
    def revoke_api_key(self, request: auth_pb.RevokeApiKeyRequest) -> auth_pb.ApiKeyInfo:
        resp: auth_pb.RevokeApiKeyResponse = self._stub.RevokeApiKey(request)
        return resp.info

    @_translate
    def list_api_keys(self, request: auth_pb.ListApiKeysRequest) -> list[auth_pb.ApiKeyInfo]:
        return list(self._stub.ListApiKeys(request).keys)


class IngestClient:
    def __init__(self, ch: grpc.Channel) -> None:
        self._stub = ingest_grpc.IngestServiceStub(ch)

    def store(self, options: ingest_pb.StoreOptions, instances: Iterable[bytes]) -> list[ingest_pb.InstanceOutcome]:
        """Stores Part 10 objects; one outcome per object, in order."""
        return self.store_chunked(options, ([data] for data in instances))

    @_translate
    def store_chunked(
        self, options: ingest_pb.StoreOptions, instances: Iterable[Iterable[bytes]]
    ) -> list[ingest_pb.InstanceOutcome]:
        """Stores Part 10 objects, each given as its pieces (read as they are
        sent, so a large file is never held whole); one outcome per object."""

        def requests() -> Iterator[ingest_pb.StoreInstancesRequest]:
            yield ingest_pb.StoreInstancesRequest(options=options)
            for pieces in instances:
                for data in pieces:
                    for i in range(0, len(data), CHUNK):
                        yield ingest_pb.StoreInstancesRequest(chunk=data[i : i + CHUNK])
                yield ingest_pb.StoreInstancesRequest(end_of_instance=True)

        return list(self._stub.StoreInstances(requests()).outcomes)

    @_translate
    def list_peers(self, tenant: str, timeout: float = 10.0) -> list[ingest_pb.PeerInfo]:
        return list(self._stub.ListPeers(ingest_pb.ListPeersRequest(tenant=tenant), timeout=timeout).peers)

    def send_to_peer(self, request: ingest_pb.SendToPeerRequest) -> Iterator[ingest_pb.SendToPeerResponse]:
        """Progress messages until one with done; errors surface on iteration."""
        try:
            yield from self._stub.SendToPeer(request)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None


class EventBusClient:
    def __init__(self, ch: grpc.Channel) -> None:
        self._stub = eb_grpc.EventBusServiceStub(ch)

    @_translate
    def status(self, timeout: float = 10.0) -> eb_pb.GetStatusResponse:
        resp: eb_pb.GetStatusResponse = self._stub.GetStatus(eb_pb.GetStatusRequest(), timeout=timeout)
        return resp

    @_translate
    def audit_statistics(
        self, tenants: Iterable[str], days: int = 0, top: int = 0, timeout: float = 30.0
    ) -> eb_pb.GetAuditStatisticsResponse:
        req = eb_pb.GetAuditStatisticsRequest(tenants=list(tenants), days=days, top=top)
        resp: eb_pb.GetAuditStatisticsResponse = self._stub.GetAuditStatistics(req, timeout=timeout)
        return resp


class RoutingClient:
    """The event bus's RoutingService: manual sends and routing dead letters."""

    def __init__(self, ch: grpc.Channel, timeout: float = 10.0) -> None:
        self._stub = routing_grpc.RoutingServiceStub(ch)
        self._timeout = timeout

    @_translate
    def list_destinations(self, tenant: str) -> list[routing_pb.RoutingDestination]:
        req = routing_pb.ListDestinationsRequest(tenant=tenant)
        return list(self._stub.ListDestinations(req, timeout=self._timeout).destinations)

    @_translate
    def send(self, request: routing_pb.SendRequest) -> routing_pb.SendProgress:
        resp: routing_pb.SendResponse = self._stub.Send(request, timeout=self._timeout)
        return resp.send

    @_translate
    def get_send(self, tenant: str, send_id: int) -> routing_pb.SendProgress:
        req = routing_pb.GetSendRequest(tenant=tenant, id=send_id)
        resp: routing_pb.GetSendResponse = self._stub.GetSend(req, timeout=self._timeout)
        return resp.send

    @_translate
    def list_dead_letters(self, request: routing_pb.ListDeadLettersRequest) -> routing_pb.ListDeadLettersResponse:
        resp: routing_pb.ListDeadLettersResponse = self._stub.ListDeadLetters(request, timeout=self._timeout)
        return resp

    @_translate
    def replay_dead_letters(self, request: routing_pb.ReplayDeadLettersRequest) -> int:
        return int(self._stub.ReplayDeadLetters(request, timeout=self._timeout).replayed)
