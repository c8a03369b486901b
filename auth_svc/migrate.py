"""Schema migrations of the auth database with Alembic (scripts in
auth_svc/migrations). auth_svc and `python -m auth_svc.keys` upgrade to
the newest revision when they open the database."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

SCRIPTS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "auth_alembic_version"
# Replicas starting together on PostgreSQL migrate one after another.
_PG_LOCK = 0x61757468  # "auth"


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
