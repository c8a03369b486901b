"""StorageService on a real folder."""

import pytest

from tests.storage_svc.storage_support import *  # noqa: F403  (the shared cases and fixtures)


@pytest.fixture(scope="module")
def backend() -> str:
    return "filesystem"
