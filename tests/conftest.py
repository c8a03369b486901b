from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import Archive  # noqa: E402


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    """One running server for the whole session, on free ports and a temp folder."""
    server = Archive(tmp_path_factory.mktemp("archive"))
    server.start()
    yield server
    code = server.stop()
    assert code == 0, "launcher did not stop cleanly:\n" + "".join(server.output)
