"""The gRPC example of docs/api.md, run as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys

import pydicom
from pydicom.data import get_testdata_file

from tests.support import ROOT, Archive


def test_example_stores_and_finds_an_instance(archive: Archive) -> None:
    path = get_testdata_file("MR_small.dcm", download=False)
    proc = subprocess.run(
        [
            sys.executable,
            "examples/store_and_query.py",
            "--ingest",
            archive.grpc_addrs["ingest"],
            "--metadata",
            archive.grpc_addrs["metadata"],
            path,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sop = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    assert proc.stdout.splitlines() == [f"stored {sop}", f"found {sop} of class 1.2.840.10008.5.1.4.1.1.4"]
