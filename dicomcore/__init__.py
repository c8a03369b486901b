"""The archive's DICOM logic, without pydicom on the hot path.

One pass over a Part 10 object's header gives its DICOM JSON, the attributes
the index needs and where its frames lie:

    from dicomcore import read_header, Rejected

    try:
        header = read_header(f, size)     # a seekable binary file, or bytes
    except Rejected as exc:
        ...                               # exc.status (a DICOM status), exc.reason

    header.json, header.json_bytes(), header.text("StudyInstanceUID"),
    header.int("Rows"), header.transfer_syntax, header.frames,
    header.pixel (a PixelLayout, .to_proto() for dicomserver.v1.PixelLayout)

Modules, one layer each: part10 (bytes to elements), dicom_json (elements to
DICOM JSON), pixels (pixel layout), header (the pass and its result),
dictionary (VRs from pydicom's dictionaries), status (every DICOM status
code, and refusals). Beside the pass: dataset_json (DICOM JSON of pydicom
Datasets built in memory), matching (DICOM attribute matching to index
filters, for QIDO-RS and C-FIND), contexts (presentation contexts for
sending stored objects) and codecs."""

from dicomcore.dicom_json import dumps
from dicomcore.header import Header, read_header
from dicomcore.pixels import PixelLayout
from dicomcore.status import CANNOT_UNDERSTAND, DATASET_MISMATCH, Rejected

__all__ = ["CANNOT_UNDERSTAND", "DATASET_MISMATCH", "Header", "PixelLayout", "Rejected", "dumps", "read_header"]
