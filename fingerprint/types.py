"""Plain data passed between the parts of the pipeline (series reader, slicer, encoder, index, worker)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: The encoder's input grid: an axial slice of SLICE_SIZE x SLICE_SIZE pixels of SLICE_SPACING_MM each.
SLICE_SIZE = 128
SLICE_SPACING_MM = 1.5


@dataclass(frozen=True)
class SeriesIdentifiers:
    """What identifies a series and its patient. PatientID here is the clear value: hash it before storing/logging."""

    patient_id: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uids: tuple[str, ...] = ()
    study_date: str = ""  # DICOM DA, YYYYMMDD, "" when absent
    modality: str = ""
    manufacturer: str = ""
    series_description: str = ""

    def as_json(self, include_patient_id: bool = False) -> dict[str, Any]:
        data = asdict(self)
        data["instance_count"] = len(self.sop_instance_uids)
        del data["sop_instance_uids"]
        if not include_patient_id:
            del data["patient_id"]
        return data


@dataclass
class SliceResult:
    """The canonical axial slice of one series: what the encoder sees, plus how it was found.

    ``pixels`` is float32 (SLICE_SIZE, SLICE_SIZE), intensities robustly normalised to about [0, 1], rows running
    anterior -> posterior and columns right -> left of the patient (radiological display), as in the PNG.
    ``geometry`` is JSON-ready: volume size/spacing/orientation found, the alignment, the level and how it was chosen.
    ``brain`` is the canonical brain the verification stage compares (uint8, :mod:`fingerprint.identity.verification`), or
    None where none was made (the middle-slice method, a slice re-read from the store).
    """

    pixels: np.ndarray
    identifiers: SeriesIdentifiers
    geometry: dict[str, Any] = field(default_factory=dict)
    method: str = "anatomical"
    brain: np.ndarray | None = None


@dataclass
class FingerprintResult:
    """One series' fingerprint: a float32 (512,) L2-normalised vector, the model that made it, and its slice."""

    vector: np.ndarray
    model_version: str
    slice: SliceResult
