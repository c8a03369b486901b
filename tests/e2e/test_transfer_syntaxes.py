"""The bench CT series retrieved (WADO-RS, series level) in every transfer
syntax the archive offers: each instance's pixels equal the stored ones for
lossless syntaxes, and are within the stated bound (dicomcore.codecs.QUALITY,
PSNR) for lossy ones; JPEG Baseline against the series windowed to 8 bits."""

from __future__ import annotations

import io
import subprocess
import warnings

import httpx
import numpy as np
import pytest
from pydicom import dcmread

from dicomcore import codecs
from testbed.processes import dcmtk_env
from tests.support import Archive, bench_ct


def _parts(r: httpx.Response) -> list[bytes]:
    boundary = r.headers["content-type"].split("boundary=")[1].strip('"').encode()
    return [p.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0] for p in r.content.split(b"--" + boundary)[1:-1]]


@pytest.mark.parametrize("target", sorted(codecs.encodable()))
def test_bench_ct_series_in_every_offered_syntax(archive: Archive, target: str) -> None:
    files = sorted(bench_ct().glob("01_1_*.dcm"))
    assert files, "the bench CT corpus is missing (python -m bench --quick makes it)"
    originals = {}
    for f in files:
        ds = dcmread(f)
        originals[ds.SOPInstanceUID] = ds
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    found = httpx.get(f"{archive.dicomweb}/studies/{study}/series/{series}/instances", timeout=30)
    if found.status_code != 200 or len(found.json()) < len(files):
        proc = subprocess.run(
            ["dcmsend", "-aec", archive.ae_title, "127.0.0.1", str(archive.dimse_port), *map(str, files)],
            env=dcmtk_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
    r = httpx.get(
        f"{archive.dicomweb}/studies/{study}/series/{series}",
        headers={"Accept": f'multipart/related; type="application/dicom"; transfer-syntax={target}'},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    parts = _parts(r)
    assert len(parts) == len(files)
    for body in parts:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = dcmread(io.BytesIO(body))
            assert got.file_meta.TransferSyntaxUID == target
            original = originals[got.SOPInstanceUID]
            want = original.pixel_array
            back = got.pixel_array
        if target in codecs.LOSSY:
            if target == codecs.JPEGBaseline8Bit:
                want, peak = codecs.eight_bit_reference(original, want[np.newaxis])[0], 255.0
            else:
                peak = float(2 ** int(original.BitsStored) - 1)
            assert codecs.psnr(back, want, peak) >= codecs.QUALITY[target]
            assert got.LossyImageCompression == "01"
        else:
            assert np.array_equal(back, want)
