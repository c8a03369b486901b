"""API keys from the command line, straight on the auth database (so the
first admin key can be made before any server runs):

    python -m auth_svc.keys create --tenant T --subject S [--scope read --scope write ...]
    python -m auth_svc.keys revoke KEY_ID
    python -m auth_svc.keys list [--tenant T]

It reads the settings auth_svc reads (DICOMSERVER_* variables,
DICOMSERVER_CONFIG_FILE). `create` prints the key alone on stdout, once;
nothing ever prints a stored hash. Exit status: 0 done, 1 no such key,
2 bad arguments or settings."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from auth_svc.keystore import (
    KEY_SCOPES,
    KeyInfo,
    KeyStore,
    check_key_id,
    check_scopes,
    check_subject,
)
from auth_svc.settings import InvalidSettings, load_settings
from common.validation import InvalidValue, check_tenant


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m auth_svc.keys", description="API keys of auth_svc")
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key and print it once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--subject", required=True, help="who holds the key (appears in audit records)")
    create.add_argument(
        "--scope", action="append", default=[], choices=KEY_SCOPES, help="repeat for several; default: read and write"
    )
    revoke = commands.add_parser("revoke", help="stop a key from working, at once")
    revoke.add_argument("key_id")
    listing = commands.add_parser("list", help="keys and their state, never their secrets")
    listing.add_argument("--tenant", default="")
    return parser


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value is not None else "-"


def _line(info: KeyInfo) -> str:
    return "\t".join(
        [info.key_id, info.tenant, ",".join(info.scopes), _when(info.created), _when(info.revoked), info.subject]
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)  # exits 2 on bad arguments
    try:
        if args.command == "create":
            check_subject(args.subject)
            check_tenant(args.tenant)
            check_scopes(args.scope)
        elif args.command == "revoke":
            check_key_id(args.key_id)
        elif args.tenant:
            check_tenant(args.tenant)
    except InvalidValue as exc:
        parser.error(str(exc))
    try:
        settings = load_settings()
    except InvalidSettings as exc:
        print(f"auth_svc.keys: invalid settings: {exc}", file=sys.stderr)
        return 2
    store = KeyStore.open(settings.effective_auth_database_url)
    try:
        if args.command == "create":
            info, key = store.create(args.subject, args.tenant, args.scope)
            print(key)
            print(
                f"created API key {info.key_id} for '{info.subject}' in tenant {info.tenant} with scopes "
                f"{', '.join(info.scopes)}; the key is shown only this once",
                file=sys.stderr,
            )
        elif args.command == "revoke":
            before = store.get(args.key_id)
            revoked = store.revoke(args.key_id)
            if before is None or revoked is None:
                print(f"no API key {args.key_id}", file=sys.stderr)
                return 1
            was = "was already" if before.revoked is not None else "is now"
            print(f"API key {revoked.key_id} {was} revoked ({_when(revoked.revoked)})", file=sys.stderr)
        else:
            print("key_id\ttenant\tscopes\tcreated\trevoked\tsubject")
            for info in store.list_keys([args.tenant] if args.tenant else None):
                print(_line(info))
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
