"""Deterministic synthetic corpora, generated once and cached by version.

Every UID starts with ``UID_ROOT`` followed by a two-digit *variant* field
(``10`` in the files on disk). Store workloads that repeat send a copy whose
variant field is rewritten byte for byte (same length, so no re-encoding):
each repetition stores new instances, never duplicates of earlier ones."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

VERSION = 1
UID_ROOT = "1.2.826.0.1.3680043.8.498.77."
BASE_VARIANT = 10

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SOP_CLASSES = {
    "CT": CT_IMAGE,
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
}
FAMILY = [
    "Müller",
    "Smith",
    "Øvergård",
    "Gómez",
    "Nguyen",
    "Dvořák",
    "Łukasiewicz",
    "Jones",
    "O'Brien",
    "Şahin",
    "Žižek",
    "Ångström",
    "Иванов",
    "Papadopoulos",
    "Björk",
    "Kowalski",
    "Nakamura",
    "Núñez",
    "Dubois",
    "Schäfer",
    "Ferreira",
    "Olsen",
    "Rossi",
    "Yılmaz",
]
GIVEN = ["Anna", "José", "Zoë", "Łukasz", "Søren", "François", "Mei", "Олег", "Aïcha", "Jürgen", "Björn", "Ines"]


@dataclass(frozen=True)
class Size:
    ct_studies: int
    ct_series_per_study: int
    ct_slices: int
    index_studies: int

    @property
    def key(self) -> str:
        return f"v{VERSION}-ct{self.ct_studies}x{self.ct_series_per_study}x{self.ct_slices}-ix{self.index_studies}"


FULL = Size(ct_studies=4, ct_series_per_study=2, ct_slices=50, index_studies=2000)
QUICK = Size(ct_studies=2, ct_series_per_study=1, ct_slices=12, index_studies=60)


def uid(variant: int, *parts: int) -> str:
    return UID_ROOT + f"{variant}." + ".".join(str(p) for p in parts)


def rewrite_variant(data: bytes, variant: int) -> bytes:
    """The same object with every UID of ``BASE_VARIANT`` moved to ``variant``."""
    if variant == BASE_VARIANT:
        return data
    assert 10 <= variant <= 99
    old = (UID_ROOT + f"{BASE_VARIANT}.").encode()
    return data.replace(old, (UID_ROOT + f"{variant}.").encode())


def _base(sop_class: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class  # type: ignore[assignment]  # pydicom makes the UID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.Manufacturer = "dicomserver-bench"
    ds.ReferringPhysicianName = ""
    return ds


def _write(ds: Dataset, path: Path) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def _ct(root: Path, size: Size) -> dict[str, Any]:
    out = root / "ct"
    out.mkdir(parents=True)
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:512, 0:512].astype(np.float32)
    studies = []
    for st in range(size.ct_studies):
        study_uid = uid(BASE_VARIANT, 1, st)
        series_list = []
        for se in range(size.ct_series_per_study):
            series_uid = uid(BASE_VARIANT, 2, st, se)
            files = []
            for i in range(size.ct_slices):
                # An elliptic "body" whose size changes along z, plus noise: 12 bits stored.
                ry, rx = 180 + 40 * np.sin(i / 15 + st), 230 - 20 * np.cos(i / 20 + se)
                body = ((yy - 256) / ry) ** 2 + ((xx - 256) / rx) ** 2 <= 1
                img = np.where(body, 1064.0, 24.0) + rng.normal(0, 25, (512, 512))
                pixels = np.clip(img, 0, 4095).astype("<u2")
                ds = _base(CT_IMAGE, "CT")
                ds.PatientName = f"{FAMILY[st % len(FAMILY)]}^{GIVEN[st % len(GIVEN)]}"
                ds.PatientID = f"BENCHCT{st:03d}"
                ds.PatientBirthDate = f"19{50 + st:02d}0101"
                ds.PatientSex = "MF"[st % 2]
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = uid(BASE_VARIANT, 3, st, se, i)
                ds.FrameOfReferenceUID = uid(BASE_VARIANT, 4, st)
                ds.StudyDate = f"2023{1 + st % 12:02d}15"
                ds.StudyTime = "101500"
                ds.AccessionNumber = f"CTACC{st:04d}"
                ds.StudyID = str(st)
                ds.StudyDescription = "CT chest abdomen"
                ds.SeriesDescription = f"axial {se}"
                ds.SeriesNumber = se + 1
                ds.InstanceNumber = i + 1
                ds.ImagePositionPatient = [-250.0, -250.0, float(-2.5 * i)]
                ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
                ds.PixelSpacing = [0.9765625, 0.9765625]
                ds.SliceThickness = 2.5
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = ds.Columns = 512
                ds.BitsAllocated = 16
                ds.BitsStored = 12
                ds.HighBit = 11
                ds.PixelRepresentation = 0
                ds.RescaleIntercept = -1024
                ds.RescaleSlope = 1
                ds.WindowCenter = 40
                ds.WindowWidth = 400
                ds.PixelData = pixels.tobytes()
                name = f"ct/{st:02d}_{se}_{i:04d}.dcm"
                _write(ds, root / name)
                files.append({"path": name, "sop": ds.SOPInstanceUID})
            series_list.append({"uid": series_uid, "files": files})
        studies.append(
            {
                "uid": study_uid,
                "patient_id": f"BENCHCT{st:03d}",
                "patient_name": f"{FAMILY[st % len(FAMILY)]}^{GIVEN[st % len(GIVEN)]}",
                "date": f"2023{1 + st % 12:02d}15",
                "series": series_list,
            }
        )
    return {"studies": studies}


def _index(root: Path, size: Size) -> dict[str, Any]:
    out = root / "index"
    out.mkdir(parents=True)
    modalities = list(SOP_CLASSES)
    pixels = bytes(range(256)) * 2  # 16 x 16, 16 bits
    studies = []
    n_patients = max(1, size.index_studies * 2 // 5)
    for st in range(size.index_studies):
        p = (st * 7919) % n_patients
        family, given = FAMILY[p % len(FAMILY)], GIVEN[(p // len(FAMILY)) % len(GIVEN)]
        study_uid = uid(BASE_VARIANT, 5, st)
        date = f"{2000 + st % 25}{1 + (st // 25) % 12:02d}{1 + (st // 300) % 28:02d}"
        n_series = (1, 2, 5)[st % 3]
        series_list = []
        for se in range(n_series):
            modality = modalities[(st + se) % len(modalities)]
            series_uid = uid(BASE_VARIANT, 6, st, se)
            files = []
            for i in range(10 // n_series):
                ds = _base(SOP_CLASSES[modality], modality)
                ds.PatientName = f"{family}^{given}"
                ds.PatientID = f"PID{p:05d}"
                ds.PatientBirthDate = f"19{40 + p % 60:02d}{1 + p % 12:02d}{1 + p % 28:02d}"
                ds.PatientSex = "MFO"[p % 3]
                ds.StudyInstanceUID = study_uid
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = uid(BASE_VARIANT, 7, st, se, i)
                ds.StudyDate = date
                ds.StudyTime = f"{8 + st % 10:02d}{st % 60:02d}00"
                ds.AccessionNumber = f"ACC{st:06d}"
                ds.StudyID = str(st)
                ds.StudyDescription = f"{modality} study {st % 17}"
                ds.SeriesDescription = f"series {se}"
                ds.SeriesNumber = se + 1
                ds.InstanceNumber = i + 1
                ds.SamplesPerPixel = 1
                ds.PhotometricInterpretation = "MONOCHROME2"
                ds.Rows = ds.Columns = 16
                ds.BitsAllocated = ds.BitsStored = 16
                ds.HighBit = 15
                ds.PixelRepresentation = 0
                ds.PixelData = pixels
                name = f"index/{st:05d}_{se}_{i}.dcm"
                _write(ds, root / name)
                files.append({"path": name, "sop": ds.SOPInstanceUID})
            series_list.append({"uid": series_uid, "modality": modality, "files": files})
        studies.append(
            {
                "uid": study_uid,
                "patient_id": f"PID{p:05d}",
                "patient_name": f"{family}^{given}",
                "date": date,
                "series": series_list,
            }
        )
    return {"studies": studies}


def ensure(cache_dir: Path, size: Size, log: Callable[[str], object] = print) -> tuple[Path, dict[str, Any]]:
    """The corpus directory and its manifest, generated when not cached yet."""
    root = cache_dir / size.key
    manifest = root / "manifest.json"
    if manifest.exists():
        return root, json.loads(manifest.read_text())
    if root.exists():
        shutil.rmtree(root)
    log(f"generating corpus {size.key} in {root} (once; cached)")
    root.mkdir(parents=True)
    data = {"ct": _ct(root, size), "index": _index(root, size)}
    manifest.write_text(json.dumps(data))
    return root, data
