"""python -m bench.header [--runs N]

What one header costs on the ingest path: dicomcore's one pass (parse, DICOM
JSON bytes, index attributes, pixel layout) against the current pydicom path
(dcmread + dicomcore.dataset_json, as ingest ran before dicomcore), on the bench CT object (the
QUICK corpus is generated into a temporary folder) and on pydicom's
CT_small.dcm (256 elements, many of them private). Prints the median and the
fastest of N runs of each."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, cast

from bench import corpus


def _ours(f: BinaryIO, size: int) -> object:
    """The pipeline's one pass: common.ingest.read_record over dicomcore."""
    from common import ingest

    f.seek(0)
    return ingest.read_record(f, size, "bench")


def _current(f: BinaryIO, size: int) -> object:
    """The pydicom path ingest took before dicomcore: dcmread of the header,
    pydicom's value conversion into DICOM JSON, the JSON bytes."""
    from pydicom import dcmread

    from dicomcore import dataset_json as dicom_json

    f.seek(0)
    ds = dcmread(f, stop_before_pixels=True)
    return dicom_json.dumps(dicom_json.dataset_to_json(ds))


def _time(fn: Callable[[BinaryIO, int], object], path: Path, runs: int) -> tuple[float, float]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        for _ in range(min(50, runs)):
            fn(f, size)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn(f, size)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's warnings on odd values; timed, not read
    from pydicom.data import get_testdata_file

    with tempfile.TemporaryDirectory() as tmp:
        root, manifest = corpus.ensure(Path(tmp), corpus.QUICK, log=lambda *_: None)
        ct = root / manifest["ct"]["studies"][0]["series"][0]["files"][0]["path"]
        # A path (not read): CT_small.dcm ships with pydicom.
        small = cast(str, get_testdata_file("CT_small.dcm", download=False))
        objects = [("bench CT", ct), ("CT_small.dcm", Path(small))]
        print(f"{'object':<14} {'pipeline':<38} {'median ms':>10} {'fastest ms':>11}")
        for label, path in objects:
            results = {}
            for name, fn in (("dicomcore", _ours), ("pydicom (dcmread + dataset_to_json)", _current)):
                median, fastest = _time(fn, path, args.runs)
                results[name] = median
                print(f"{label:<14} {name:<38} {median:>10.3f} {fastest:>11.3f}")
            ratio = results["pydicom (dcmread + dataset_to_json)"] / results["dicomcore"]
            print(f"{label:<14} {'speed-up':<38} {ratio:>9.1f}x")


if __name__ == "__main__":
    main()
