"""python -m importer import PATH... [--workers N] [--tenant T] [--report FILE]

Imports folders, zip files and DICOMDIR media into a running archive through
its IngestService (gRPC), skipping SOP instances the tenant already holds,
with a progress bar and a summary table per outcome and reason.

Exit status: 0 when every DICOM file is in the archive (stored now or
before; files that are not DICOM are listed but do not count), 1 when some
did not go in (refused, unreadable), 2 for a usage error, 3 when the archive
cannot be reached."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console

from common.clients import IngestClient, MetadataClient, channel
from common.settings import CommonSettings
from common.tls import TLSConfigError
from importer.report import ProgressBar, print_report, problems, write_report
from importer.run import Importer
from importer.sources import Sources

UNREACHABLE = 3


def _parser(settings: CommonSettings) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m importer", description=__doc__.split("\n\n")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="import folders, zip files and DICOMDIR media")
    imp.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a folder, a zip file, a DICOMDIR or a file")
    imp.add_argument("--workers", type=int, default=4, help="batches sent at once (default 4)")
    imp.add_argument("--tenant", default=settings.default_tenant, help="tenant to import into (default %(default)s)")
    imp.add_argument("--ingest", default=settings.ingest_addr, help="IngestService address (DICOMSERVER_INGEST_ADDR)")
    imp.add_argument(
        "--metadata", default=settings.metadata_addr, help="MetadataService address (DICOMSERVER_METADATA_ADDR)"
    )
    imp.add_argument("--report", type=Path, help="write every file's outcome to FILE (JSON lines)")
    imp.add_argument("--no-progress", action="store_true", help="no progress bar (it is off when not on a terminal)")
    return parser


def _reachable(ch: grpc.Channel, timeout: float = 10.0) -> bool:
    try:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
    except grpc.RpcError:
        return False
    return bool(status == health_pb2.HealthCheckResponse.SERVING)


def run_import(args: argparse.Namespace, settings: CommonSettings, console: Console) -> int:
    if args.workers < 1:
        console.print("--workers must be at least 1")
        return 2
    try:
        ingest_ch, metadata_ch = channel(args.ingest, settings), channel(args.metadata, settings)
    except TLSConfigError as exc:
        console.print(f"[red]{exc}[/]")
        return 2
    with ingest_ch, metadata_ch:
        for name, ch, addr in (
            ("IngestService", ingest_ch, args.ingest),
            ("MetadataService", metadata_ch, args.metadata),
        ):
            if not _reachable(ch):
                console.print(f"[red]the archive's {name} does not answer at {addr}[/]")
                return UNREACHABLE
        with Sources() as sources:
            items = list(sources.items(args.paths))
            console.print(
                f"{len(items)} files, {sum(i.size for i in items) / 1e6:.1f} MB "
                f"into tenant {args.tenant!r} with {args.workers} workers"
            )
            started = time.monotonic()
            with ProgressBar(console, items, enabled=not args.no_progress) as bar:
                importer = Importer(
                    IngestClient(ingest_ch),
                    MetadataClient(metadata_ch),
                    args.tenant,
                    workers=args.workers,
                    on_result=bar.add,
                )
                results = importer.run(items)
            elapsed = time.monotonic() - started
    print_report(console, results, elapsed)
    if args.report is not None:
        write_report(args.report, results)
    return 1 if problems(results) else 0


def main(argv: list[str] | None = None) -> int:
    settings = CommonSettings()
    args = _parser(settings).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    console = Console()
    return run_import(args, settings, console)


if __name__ == "__main__":
    sys.exit(main())
