"""What the paths on the command line hold, as a flat list of items to import:

- a folder: every file below it, in name order; `.zip` files in it are
  opened as zips (a DICOMDIR in it is found and skipped: its files are
  below it anyway);
- a zip file: its members (not zips within zips);
- a DICOMDIR: the files its records reference (a missing one is
  reported), so a CD or DVD can be imported from its index alone;
- any other file: itself.

Nothing is read here beyond directory listings and zip directories, so the
totals for the progress bar are known at once. A path that cannot be listed
becomes an item with a problem, reported like an unreadable file."""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydicom import dcmread


@dataclass(frozen=True)
class Item:
    """One file to import."""

    name: str  # for people: a path, or "archive.zip!member"
    size: int
    open: Callable[[], IO[bytes]] = field(repr=False, compare=False)
    # Why the item cannot be imported before anything is read (a missing
    # file a DICOMDIR references, an unreadable zip); empty when it can.
    problem: str = ""


def _never() -> IO[bytes]:
    raise OSError("nothing to open")


class Sources:
    """Lists items; keeps the zips it opened open until close()."""

    def __init__(self) -> None:
        self._zips: list[zipfile.ZipFile] = []

    def close(self) -> None:
        for zf in self._zips:
            zf.close()
        self._zips.clear()

    def __enter__(self) -> Sources:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def items(self, paths: list[Path]) -> Iterator[Item]:
        seen: set[str] = set()
        for path in paths:
            for item in self._path(path):
                if item.name in seen:  # a file named twice (a folder and its DICOMDIR)
                    continue
                seen.add(item.name)
                yield item

    def _path(self, path: Path) -> Iterator[Item]:
        if path.is_dir():
            yield from self._folder(path)
        elif not path.exists():
            yield Item(str(path), 0, _never, "no such file or folder")
        elif path.name.upper() == "DICOMDIR":
            yield from self._dicomdir(path)
        elif path.suffix.lower() == ".zip" or zipfile.is_zipfile(path):
            yield from self._zip(path)
        else:
            yield self._file(path)

    @staticmethod
    def _file(path: Path) -> Item:
        try:
            size = path.stat().st_size
        except OSError as exc:
            return Item(str(path), 0, _never, f"cannot read: {exc.strerror}")
        return Item(str(path), size, lambda: path.open("rb"))

    def _folder(self, root: Path) -> Iterator[Item]:
        def failed(exc: OSError) -> None:
            problems.append(Item(exc.filename or str(root), 0, _never, f"cannot list: {exc.strerror}"))

        problems: list[Item] = []
        for folder, dirs, files in os.walk(root, onerror=failed):
            dirs.sort()
            yield from problems
            problems.clear()
            for name in sorted(files):
                path = Path(folder, name)
                if path.suffix.lower() == ".zip":
                    yield from self._zip(path)
                else:
                    yield self._file(path)
        yield from problems

    def _zip(self, path: Path) -> Iterator[Item]:
        try:
            zf = zipfile.ZipFile(path)
        except (OSError, zipfile.BadZipFile) as exc:
            yield Item(str(path), 0, _never, f"not a readable zip file ({exc})")
            return
        self._zips.append(zf)
        for info in zf.infolist():
            if info.is_dir():
                continue
            yield Item(f"{path}!{info.filename}", info.file_size, functools.partial(zf.open, info))

    def _dicomdir(self, path: Path) -> Iterator[Item]:
        try:
            records = dcmread(path, force=True).DirectoryRecordSequence
        except Exception as exc:  # pydicom raises many kinds for a broken directory
            yield Item(str(path), 0, _never, f"not a readable DICOMDIR ({type(exc).__name__})")
            return
        for record in records:
            file_id = record.get("ReferencedFileID")
            if not file_id:
                continue  # a patient, study or series record
            parts = [file_id] if isinstance(file_id, str) else [str(p) for p in file_id]
            ref = _on_medium(path.parent, parts)
            if ref is None:
                yield Item(
                    str(path.parent.joinpath(*parts)),
                    0,
                    _never,
                    "referenced by the DICOMDIR but missing from the medium",
                )
            else:
                yield self._file(ref)


def _on_medium(root: Path, parts: list[str]) -> Path | None:
    """The file a DICOMDIR's Referenced File ID names (PS3.10 8.2: upper-case
    components), matched without regard to case, as media mounted on a
    case-sensitive system often show their names in lower case."""
    path = root.joinpath(*parts)
    if path.is_file():
        return path
    current = root
    for part in parts:
        try:
            names = {p.name.upper(): p for p in current.iterdir()}
        except OSError:
            return None
        found = names.get(part.upper())
        if found is None:
            return None
        current = found
    return current if current.is_file() else None
