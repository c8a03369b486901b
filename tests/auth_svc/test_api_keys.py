"""API keys through the admin RPCs of a real gRPC server, on SQLite and on a
real PostgreSQL: made, used, revoked (refused at once), stored hashed, and
administered only by admins of the key's tenant."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from auth_svc.keystore import KeyStore, make_engine
from auth_svc.settings import ApiKey, AuthSettings, DimseRule
from common.clients import AuthClient
from common.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated, Unavailable
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from testbed.processes import free_port
from testbed.servers import new_database, shared
from tests.auth_svc.auth_support import serving

ADMIN_A, ADMIN_B, READER_A = "admin-of-tenant-a", "admin-of-tenant-b", "reader-of-tenant-a"
LIMITED_ADMIN = "admin-who-may-only-read"


def _configured(key: str, subject: str, tenants: list[str], scopes: list[str]) -> ApiKey:
    return ApiKey(sha256=hashlib.sha256(key.encode()).hexdigest(), subject=subject, tenants=tenants, scopes=scopes)


SETTINGS = AuthSettings(
    auth_enabled=True,
    api_keys=[
        _configured(ADMIN_A, "admin-a", ["a"], ["read", "write", "delete", "admin"]),
        _configured(ADMIN_B, "admin-b", ["b"], ["read", "write", "delete", "admin"]),
        _configured(READER_A, "reader-a", ["a"], ["read", "write"]),
        _configured(LIMITED_ADMIN, "limited", ["a"], ["read", "admin"]),
    ],
)
_tenants = itertools.count()


def caller(key: str) -> pb.Credential:
    return pb.Credential(api_key=key)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyStore]:
    if request.param == "sqlite":
        keys = KeyStore.open(f"sqlite:///{tmp_path_factory.mktemp('auth') / 'auth.sqlite3'}")
        yield keys
        keys.close()
        return
    with shared("postgres") as pg:
        keys = KeyStore.open(new_database(pg, "auth"))
        yield keys
        keys.close()


@pytest.fixture(scope="module")
def client(store: KeyStore) -> Iterator[AuthClient]:
    with serving(SETTINGS, store) as c:
        yield c


def create(
    client: AuthClient,
    admin: str = ADMIN_A,
    tenant: str = "a",
    subject: str = "modality-x",
    scopes: tuple[str, ...] = ("read",),
) -> pb.CreateApiKeyResponse:
    return client.create_api_key(
        pb.CreateApiKeyRequest(caller=caller(admin), subject=subject, tenant=tenant, scopes=scopes)
    )


def test_create_use_revoke_refused_at_once(client: AuthClient) -> None:
    made = create(client, scopes=("read", "write"))
    assert made.api_key.startswith(f"dsk_{made.info.key_id}_")
    assert (made.info.subject, made.info.tenant, list(made.info.scopes)) == ("modality-x", "a", ["read", "write"])
    assert made.info.HasField("created") and not made.info.HasField("revoked")
    answer = client.check(caller(made.api_key), pb.ACTION_WRITE)
    assert (answer.principal.subject, list(answer.principal.tenants), answer.tenant) == ("modality-x", ["a"], "a")
    with pytest.raises(PermissionDenied, match="'delete' scope"):
        client.check(caller(made.api_key), pb.ACTION_DELETE)

    revoked = client.revoke_api_key(pb.RevokeApiKeyRequest(caller=caller(ADMIN_A), key_id=made.info.key_id))
    assert revoked.key_id == made.info.key_id and revoked.HasField("revoked")
    with pytest.raises(Unauthenticated, match="^unknown or revoked API key$"):
        client.check(caller(made.api_key), pb.ACTION_READ)
    with pytest.raises(Unauthenticated, match="^unknown or revoked API key$"):
        client.authenticate(pb.AuthenticateRequest(api_key=made.api_key))
    # Revoking again keeps the first revocation time.
    again = client.revoke_api_key(pb.RevokeApiKeyRequest(caller=caller(ADMIN_A), key_id=made.info.key_id))
    assert again.revoked == revoked.revoked


def test_unknown_and_tampered_keys_are_refused_alike(client: AuthClient) -> None:
    made = create(client)
    key_id = made.info.key_id
    secret = made.api_key[len(f"dsk_{key_id}_") :]
    tampered = [
        f"dsk_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}",  # the right id, a wrong secret
        f"dsk_{'Z' * 12}_{secret}",  # an unknown id
        made.api_key + "x",
        made.api_key[:-1],
        made.api_key.upper(),
        f"dsk_{key_id}",
        "",
    ]
    for key in tampered:
        with pytest.raises(Unauthenticated, match="^unknown or revoked API key$"):
            client.check(caller(key), pb.ACTION_READ)
    assert client.check(caller(made.api_key), pb.ACTION_READ).principal.subject == "modality-x"


def test_empty_scopes_mean_read_and_write(client: AuthClient) -> None:
    assert list(create(client, scopes=()).info.scopes) == ["read", "write"]


def test_stored_hashed(client: AuthClient, store: KeyStore) -> None:
    made = create(client, subject="hash-check")
    secret = made.api_key.split("_", 2)[2]  # dsk_<key_id>_<secret>; the key id has no "_"
    with store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM auth_api_keys WHERE key_id = :k"), {"k": made.info.key_id}).all()
        everything = [tuple(r) for r in conn.execute(text("SELECT * FROM auth_api_keys")).all()]
    assert len(rows) == 1
    assert rows[0]._mapping["sha256"] == hashlib.sha256(made.api_key.encode()).hexdigest()
    dumped = repr(everything)
    assert made.api_key not in dumped and secret not in dumped
    if store.engine.dialect.name == "sqlite":
        path = Path(str(store.engine.url.database))
        files = [p for p in path.parent.iterdir() if p.name.startswith(path.name)]
        data = b"".join(p.read_bytes() for p in files)
        assert made.info.key_id.encode() in data  # the row is there, in these files...
        assert secret.encode() not in data  # ...but never the secret
        assert all(p.stat().st_mode & 0o077 == 0 for p in files)


@pytest.mark.parametrize("key", [READER_A, None])
def test_admin_rpcs_need_the_admin_scope(client: AuthClient, key: str | None) -> None:
    expected = PermissionDenied if key else Unauthenticated
    credential = caller(key) if key else None
    with pytest.raises(expected):
        client.create_api_key(pb.CreateApiKeyRequest(caller=credential, subject="x", tenant="a"))
    target = create(client).info.key_id
    with pytest.raises(expected):
        client.revoke_api_key(pb.RevokeApiKeyRequest(caller=credential, key_id=target))
    with pytest.raises(expected):
        client.list_api_keys(pb.ListApiKeysRequest(caller=credential))
    with pytest.raises(Unauthenticated):
        client.create_api_key(pb.CreateApiKeyRequest(caller=caller("wrong"), subject="x", tenant="a"))
    assert not [k for k in client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_A))) if k.key_id == target][
        0
    ].HasField("revoked")


def test_an_admin_of_one_tenant_cannot_touch_another(client: AuthClient) -> None:
    before = client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_B)))
    with pytest.raises(PermissionDenied, match="^no access to tenant$"):
        create(client, admin=ADMIN_A, tenant="b")
    assert client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_B))) == before

    of_b = create(client, admin=ADMIN_B, tenant="b").info.key_id
    # A's admin cannot revoke B's key: to it, the key does not exist.
    for key_id in (of_b, "Q" * 12):
        with pytest.raises(NotFound, match="^unknown API key id$"):
            client.revoke_api_key(pb.RevokeApiKeyRequest(caller=caller(ADMIN_A), key_id=key_id))
    assert not [k for k in client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_B))) if k.key_id == of_b][
        0
    ].HasField("revoked")
    with pytest.raises(PermissionDenied, match="^no access to tenant$"):
        client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_A), tenant="b"))
    listed_a = client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_A)))
    assert listed_a and {k.tenant for k in listed_a} == {"a"}
    assert of_b not in {k.key_id for k in listed_a}


def test_an_admin_cannot_grant_scopes_it_lacks(client: AuthClient) -> None:
    with pytest.raises(PermissionDenied, match="'write' scope"):
        create(client, admin=LIMITED_ADMIN, scopes=("read", "write"))
    assert list(create(client, admin=LIMITED_ADMIN, scopes=("read",)).info.scopes) == ["read"]


@pytest.mark.parametrize(
    ("subject", "tenant", "scopes", "reason"),
    [
        ("", "a", ("read",), "subject"),
        ("x" * 129, "a", ("read",), "subject"),
        ("tab\there", "a", ("read",), "subject"),
        ("newline\n", "a", ("read",), "subject"),
        ("ok", "", ("read",), "tenant must be"),
        ("ok", "A", ("read",), "tenant must be"),
        ("ok", "a/../b", ("read",), "tenant must be"),
        ("ok", "a", ("root",), "unknown scope"),
        ("ok", "a", ("read", "Read"), "unknown scope"),
    ],
)
def test_bad_arguments_change_nothing(
    client: AuthClient, subject: str, tenant: str, scopes: tuple[str, ...], reason: str
) -> None:
    before = client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_A)))
    with pytest.raises(InvalidArgument, match=reason):
        create(client, subject=subject, tenant=tenant, scopes=scopes)
    assert client.list_api_keys(pb.ListApiKeysRequest(caller=caller(ADMIN_A))) == before


@pytest.mark.parametrize("key_id", ["", "short", "x" * 13, "abc-def_ghij", "../../etc/pa"])
def test_malformed_key_ids_are_invalid(client: AuthClient, key_id: str) -> None:
    with pytest.raises(InvalidArgument, match="key id"):
        client.revoke_api_key(pb.RevokeApiKeyRequest(caller=caller(ADMIN_A), key_id=key_id))


def test_auth_off_the_anonymous_admin_keeps_to_the_default_tenant(tmp_path: Path) -> None:
    keys = KeyStore.open(f"sqlite:///{tmp_path / 'auth.sqlite3'}")
    try:
        with serving(AuthSettings(auth_enabled=False), keys) as client:
            made = client.create_api_key(pb.CreateApiKeyRequest(subject="dev", tenant="default"))
            with pytest.raises(PermissionDenied, match="^no access to tenant$"):
                client.create_api_key(pb.CreateApiKeyRequest(subject="dev", tenant="other"))
            assert [k.key_id for k in client.list_api_keys(pb.ListApiKeysRequest())] == [made.info.key_id]
            assert client.check(caller(made.api_key), pb.ACTION_READ).principal.subject == "dev"
            # The key's own principal, not the anonymous one: it may not delete.
            with pytest.raises(PermissionDenied, match="'delete' scope"):
                client.check(caller(made.api_key), pb.ACTION_DELETE)
            client.revoke_api_key(pb.RevokeApiKeyRequest(key_id=made.info.key_id))
            with pytest.raises(Unauthenticated, match="unknown or revoked"):
                client.check(caller(made.api_key), pb.ACTION_READ)
    finally:
        keys.close()


def test_a_key_made_by_one_store_is_revoked_for_another_on_the_same_database(store: KeyStore) -> None:
    """Two replicas of auth_svc over one database: a revocation on one holds on the other at once."""
    other = KeyStore.open(str(store.engine.url.render_as_string(hide_password=False)))
    try:
        info, key = store.create("replica", f"t{next(_tenants)}", ["read"])
        assert other.find(key) == info
        assert other.revoke(info.key_id) is not None
        assert store.find(key) is None
    finally:
        other.close()


def test_an_unreachable_key_database_fails_closed_as_unavailable() -> None:
    """PostgreSQL that does not answer (nothing listens on the port)."""
    keys = KeyStore(make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/auth?connect_timeout=5"))
    try:
        with serving(SETTINGS, keys) as client:
            with pytest.raises(Unavailable, match="API key database is unavailable"):
                client.check(caller(f"dsk_{'A' * 12}_{'b' * 43}"), pb.ACTION_READ)
            with pytest.raises(Unavailable):
                create(client)
            # Keys from the settings need no database; malformed keys never reach it.
            assert client.check(caller(READER_A), pb.ACTION_READ).tenant == "a"
            with pytest.raises(Unauthenticated):
                client.check(caller("not-a-stored-key"), pb.ACTION_READ)
    finally:
        keys.close()


def test_a_dimse_peer_cannot_administer_keys(tmp_path: Path) -> None:
    settings = AuthSettings(
        auth_enabled=True, dimse_rules=[DimseRule(calling_ae_title="PACS", tenant="a", scopes=["read", "admin"])]
    )
    keys = KeyStore.open(f"sqlite:///{tmp_path / 'auth.sqlite3'}")
    try:
        with serving(settings, keys) as client:
            dimse = pb.Credential(dimse_peer=pb.DimsePeer(calling_ae_title="PACS", peer_address="10.0.0.1"))
            with pytest.raises(PermissionDenied, match="DIMSE peer"):
                client.create_api_key(pb.CreateApiKeyRequest(caller=dimse, subject="x", tenant="a", scopes=["read"]))
            with pytest.raises(PermissionDenied, match="DIMSE peer"):
                client.list_api_keys(pb.ListApiKeysRequest(caller=dimse))
        assert keys.list_keys() == []
    finally:
        keys.close()
