"""docs/configuration.md mirrors the settings models: every setting of every
service appears in it, and it lists none that does not exist."""

from __future__ import annotations

import re

from auth_svc.settings import AuthSettings
from common.settings import CommonSettings
from dicomweb_gateway.settings import GatewaySettings
from eventbus.settings import EventbusSettings
from ingest_svc.settings import IngestSettings
from launcher.__main__ import LauncherSettings
from metadata_svc.settings import MetadataSettings
from storage_svc.settings import StorageSettings
from tests.support import ROOT

MODELS: list[type[CommonSettings]] = [
    CommonSettings,
    StorageSettings,
    MetadataSettings,
    AuthSettings,
    IngestSettings,
    GatewaySettings,
    EventbusSettings,
    LauncherSettings,
]
# Read from the environment directly, not through a settings model.
NOT_FIELDS = {"DICOMSERVER_CONFIG_FILE"}
PREFIX = "DICOMSERVER"


def settings_in_code() -> set[str]:
    return {f"{PREFIX}_{name.upper()}" for model in MODELS for name in model.model_fields}


def settings_on_the_page() -> set[str]:
    """Variables named in the first two columns of the page's tables; a
    name written `_X` after a full one is DICOMSERVER_X."""
    names: set[str] = set()
    for line in (ROOT / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("|"):
            continue
        for cell in line.split("|")[1:3]:
            for token in re.findall(r"`(DICOMSERVER_[A-Z0-9_]+|_[A-Z0-9_]+)`", cell):
                names.add(token if token.startswith(PREFIX) else PREFIX + token)
    return names


def test_every_setting_is_documented() -> None:
    missing = settings_in_code() - settings_on_the_page()
    assert not missing, f"settings missing from docs/configuration.md: {sorted(missing)}"


def test_the_page_lists_no_setting_that_does_not_exist() -> None:
    unknown = settings_on_the_page() - settings_in_code() - NOT_FIELDS
    assert not unknown, f"docs/configuration.md lists settings no model has: {sorted(unknown)}"
