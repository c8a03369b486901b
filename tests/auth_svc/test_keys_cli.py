"""`python -m auth_svc.keys` on a temporary data folder, with a running
auth_svc process that honours what it does at once."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from auth_svc import keys
from common.errors import Unauthenticated
from common.gen.dicomserver.v1 import auth_service_pb2 as pb
from tests.auth_svc.auth_support import auth_process, service_env
from tests.support import ROOT


def keys_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "auth_svc.keys", *args],
        cwd=ROOT,
        env=service_env(data_dir),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_create_list_revoke_honoured_by_the_running_service(tmp_path: Path) -> None:
    with auth_process(tmp_path, auth_enabled="true") as client:
        made = keys_cli(
            tmp_path,
            "create",
            "--tenant",
            "ward-7",
            "--subject",
            "bootstrap admin",
            "--scope",
            "admin",
            "--scope",
            "read",
        )
        assert made.returncode == 0, made.stderr
        key = made.stdout.strip()
        assert made.stdout == key + "\n" and key.startswith("dsk_")
        key_id = key.split("_")[1]
        assert key_id in made.stderr and key not in made.stderr

        answer = client.check(pb.Credential(api_key=key), pb.ACTION_READ)
        assert (answer.principal.subject, answer.tenant, list(answer.principal.scopes)) == (
            "bootstrap admin",
            "ward-7",
            ["read", "admin"],
        )
        # The bootstrapped admin administers its tenant through the RPCs.
        other = client.create_api_key(
            pb.CreateApiKeyRequest(
                caller=pb.Credential(api_key=key), subject="viewer", tenant="ward-7", scopes=["read"]
            )
        )

        listed = keys_cli(tmp_path, "list")
        assert listed.returncode == 0
        rows = [line.split("\t") for line in listed.stdout.splitlines()[1:]]
        assert sorted((r[0], r[1], r[2], r[4], r[5]) for r in rows) == sorted(
            [
                (key_id, "ward-7", "read,admin", "-", "bootstrap admin"),
                (other.info.key_id, "ward-7", "read", "-", "viewer"),
            ]
        )
        for secret in (
            key,
            key.split("_", 2)[2],
            hashlib.sha256(key.encode()).hexdigest(),
            other.api_key,
            hashlib.sha256(other.api_key.encode()).hexdigest(),
        ):
            assert secret not in listed.stdout + listed.stderr
        assert keys_cli(tmp_path, "list", "--tenant", "elsewhere").stdout.splitlines()[1:] == []

        revoked = keys_cli(tmp_path, "revoke", key_id)
        assert revoked.returncode == 0 and "is now revoked" in revoked.stderr
        with pytest.raises(Unauthenticated, match="unknown or revoked API key"):
            client.check(pb.Credential(api_key=key), pb.ACTION_READ)
        assert client.check(pb.Credential(api_key=other.api_key), pb.ACTION_READ).tenant == "ward-7"
        again = keys_cli(tmp_path, "revoke", key_id)
        assert again.returncode == 0 and "already revoked" in again.stderr
        assert [r for r in keys_cli(tmp_path, "list").stdout.splitlines() if r.startswith(key_id)][0].split("\t")[
            4
        ] != "-"


@pytest.mark.parametrize(
    ("args", "status"),
    [
        (["revoke", "AAAAAAAAAAAA"], 1),
        (["revoke", "not-a-key-id"], 2),
        (["create", "--tenant", "Bad Tenant", "--subject", "x"], 2),
        (["create", "--tenant", "a", "--subject", ""], 2),
        (["create", "--tenant", "a", "--subject", "x", "--scope", "root"], 2),
        (["create", "--subject", "x"], 2),
        (["list", "--tenant", "../a"], 2),
        (["rotate"], 2),
    ],
)
def test_exit_status_and_nothing_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], status: int
) -> None:
    """In process (the subprocess test above covers the real entry point)."""
    for name in [n for n in os.environ if n.startswith("DICOMSERVER_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DICOMSERVER_DATA_DIR", str(tmp_path))
    try:
        code = keys.main(args)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert (code, out) == (status, "") and err.strip()
    assert keys.main(["list"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
