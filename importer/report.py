"""What people see: a progress bar while the import runs (files, MB, rate,
time left) and a summary table per outcome and reason at the end (rich)."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from importer.run import Outcome, Result
from importer.sources import Item

# Files named at the end among those that did not go in (all are in --report).
SHOW_PROBLEMS = 20


class ProgressBar:
    """The live bar; `add(result)` may be called from any thread."""

    def __init__(self, console: Console, items: list[Item], enabled: bool = True) -> None:
        self.total_files = len(items)
        self.files = 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[files]}/{task.fields[total_files]} files"),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TextColumn("{task.fields[rate]:.0f} files/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=not enabled,
            refresh_per_second=4,
        )
        self.task: TaskID = self.progress.add_task(
            "importing", total=sum(i.size for i in items), files=0, total_files=self.total_files, rate=0.0
        )

    def add(self, result: Result) -> None:
        with self._lock:
            self.files += 1
            files = self.files
        rate = files / max(time.monotonic() - self.started, 1e-6)
        self.progress.update(self.task, advance=result.item.size, files=files, rate=rate)

    def __enter__(self) -> ProgressBar:
        self.started = time.monotonic()
        self.progress.start()
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()


def summary(results: list[Result], elapsed: float) -> Table:
    counts: Counter[tuple[Outcome, str]] = Counter()
    sizes: Counter[tuple[Outcome, str]] = Counter()
    for r in results:
        key = (r.outcome, r.reason if not r.outcome.went_in or r.outcome == Outcome.STORED_WITH_WARNING else "")
        counts[key] += 1
        sizes[key] += r.item.size
    total = sum(r.item.size for r in results)
    table = Table(
        title=f"{len(results)} files, {total / 1e6:.1f} MB in {elapsed:.1f} s "
        f"({len(results) / max(elapsed, 1e-9):.0f} files/s, {total / 1e6 / max(elapsed, 1e-9):.1f} MB/s)"
    )
    table.add_column("outcome")
    table.add_column("reason")
    table.add_column("files", justify="right")
    table.add_column("MB", justify="right")
    order = list(Outcome)
    for (outcome, reason), n in sorted(counts.items(), key=lambda kv: (order.index(kv[0][0]), -kv[1], kv[0][1])):
        style = "green" if outcome.went_in else "red" if outcome.counts else "dim"
        table.add_row(f"[{style}]{outcome.value}[/]", reason, str(n), f"{sizes[(outcome, reason)] / 1e6:.1f}")
    return table


def problems(results: list[Result]) -> list[Result]:
    """The DICOM files that did not go in."""
    return [r for r in results if r.outcome.counts and not r.outcome.went_in]


def print_report(console: Console, results: list[Result], elapsed: float) -> None:
    console.print(summary(results, elapsed))
    bad = problems(results)
    for r in bad[:SHOW_PROBLEMS]:
        console.print(f"[red]{r.outcome.value}[/]: {r.item.name}: {r.reason}", markup=True, highlight=False)
    if len(bad) > SHOW_PROBLEMS:
        console.print(f"… and {len(bad) - SHOW_PROBLEMS} more (--report FILE lists every file)")
    if bad:
        console.print(
            f"[red]{len(bad)} DICOM file(s) did not go in[/]; running the same import again retries "
            "them and skips what is stored"
        )
    else:
        console.print("[green]every DICOM file is in the archive[/]")


def write_report(path: Path, results: list[Result]) -> None:
    """Every file's outcome, one JSON object a line."""
    with path.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(
                json.dumps(
                    {
                        "file": r.item.name,
                        "bytes": r.item.size,
                        "outcome": r.outcome.value,
                        "reason": r.reason,
                        "sop_instance_uid": r.sop_instance_uid,
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
