from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import Archive  # noqa: E402


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """One running server for the whole session, on free ports and a temp folder."""
    server = Archive(tmp_path_factory.mktemp("archive"))
    server.start()
    yield server
    code = server.stop()
    assert code == 0, "launcher did not stop cleanly:\n" + "".join(server.output)
