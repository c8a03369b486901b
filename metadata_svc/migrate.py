"""Schema migrations with Alembic (scripts in metadata_svc/migrations).

    python -m metadata_svc.migrate [upgrade REV | downgrade REV | current]

The service upgrades to head on start. A database made by the first release
(tables from create_all, no alembic_version) is taken as revision 0001."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, text

log = logging.getLogger(__name__)

SCRIPTS = Path(__file__).resolve().parent / "migrations"
FIRST = "0001"
# Replicas starting together on PostgreSQL migrate one after another.
_PG_LOCK = 0x6D657461  # "meta"


def _config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    return cfg


def current(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run(engine: Engine, action: str, revision: str) -> None:
    cfg = _config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        cfg.attributes["connection"] = conn
        tables = set(inspect(conn).get_table_names())
        if "alembic_version" not in tables and "instances" in tables:
            log.info("database without a revision: taking it as %s", FIRST)
            command.stamp(cfg, FIRST)
        if action == "upgrade":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, "upgrade", revision)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, "downgrade", revision)


def main(argv: list[str] | None = None) -> None:
    from metadata_svc.db import make_engine
    from metadata_svc.settings import MetadataSettings

    parser = argparse.ArgumentParser(prog="python -m metadata_svc.migrate")
    parser.add_argument("action", choices=["upgrade", "downgrade", "current"])
    parser.add_argument("revision", nargs="?", default="head")
    args = parser.parse_args(argv)
    engine = make_engine(MetadataSettings().effective_database_url)
    try:
        if args.action == "current":
            print(current(engine) or "(empty)")
        elif args.action == "upgrade":
            upgrade(engine, args.revision)
        else:
            downgrade(engine, args.revision)
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
