"""DICOM TLS settings: all or nothing, never a quiet fallback to plain DIMSE."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.tls import TLSConfigError
from ingest_svc.scp import tls_context
from ingest_svc.settings import IngestSettings


def test_no_tls_settings_serve_plain_dimse() -> None:
    assert tls_context(IngestSettings()) is None


@pytest.mark.parametrize(
    "given", [{"tls_ca_file"}, {"tls_key_file"}, {"tls_cert_file"}, {"tls_ca_file", "tls_key_file"}]
)
def test_a_partial_configuration_is_refused(tmp_path: Path, given: set[str]) -> None:
    files = {name: tmp_path / f"{name}.pem" for name in given}
    for path in files.values():
        path.write_text("not used")
    with pytest.raises(TLSConfigError, match="DICOMSERVER_TLS"):
        tls_context(IngestSettings(**files))
