"""C-STORE throughput of the launched server (not a test: run it by hand).

    .venv/bin/python tests/ingest_svc/cstore_perf.py [--count 100] [--runs 3] [--workers 1]

Generates `count` 512x512 16-bit CT objects, starts the server on free
ports, and sends them with dcmsend (TCP_NODELAY=1) over 1 association and
over 4 parallel associations (4 dcmsend processes); prints instances/s, the
median of `runs` runs each."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from support import Archive, dcmtk_env  # noqa: E402

ENV = dcmtk_env()


def make_ct(path: Path, study: str, series: str, number: int, rng: np.random.Generator) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality = "Perf^Test", "PERF", "CT"
    ds.StudyDate, ds.InstanceNumber = "20240101", number
    ds.Rows = ds.Columns = 512
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (512, 512), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def send(archive: Archive, folders: list[Path]) -> float:
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["dcmsend", "-aec", archive.ae_title, "+sd", "+r", "127.0.0.1", str(archive.dimse_port), str(f)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        for f in folders
    ]
    for p in procs:
        _, err = p.communicate()
        assert p.returncode == 0, err
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="DICOMSERVER_DIMSE_WORKERS")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cstore-perf-"))
    rng = np.random.default_rng(0)
    corpus = root / "corpus"
    for part in range(4):
        (corpus / str(part)).mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for i in range(args.count):
        make_ct(corpus / str(i % 4) / f"{i}.dcm", study, series, i + 1, rng)
    archive = Archive(root / "data", extra_env={"DICOMSERVER_DIMSE_WORKERS": str(args.workers)})
    archive.start()
    try:
        for label, folders in (("1 association", [corpus]), ("4 associations", sorted(corpus.iterdir()))):
            rates = []
            for _ in range(args.runs):
                rates.append(args.count / send(archive, folders))
            print(f"{label}: {statistics.median(rates):.1f} instances/s (runs: {', '.join(f'{r:.1f}' for r in rates)})")
    finally:
        archive.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
