"""Results any PACS can show: a DICOM Structured Report and a Secondary Capture of the evidence, per flag.

Orthanc metadata reaches only Orthanc; other archives (dcm4chee, commercial PACS) show AI results as DICOM objects in
the study (the IHE AI Results convention). For each flag this module makes, with highdicom, two new series in the
flagged study:

* a Comprehensive SR: the verdict, why, what to do next, the fingerprint and verification scores, the PatientID the
  scan matched (keyed hash), the series compared and the model and thresholds that decided;
* a Secondary Capture (RGB) of the evidence: the new scan's slice beside the scan it was compared with, and the 3D
  verification's checkerboard where there is one.

The patient and study attributes come from the flagged study itself (``study``: what the PACS holds, e.g. Orthanc's
main DICOM tags of the study), so the objects file into the right study; the archive keeps no clear PatientID.

Example::

    objects = results_for_flag(flag, study={"PatientID": "...", "StudyInstanceUID": flag.study_instance_uid, ...})
    send_instances(objects, 4242, host="pacs", called_ae="PACS")
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

from fingerprint.reports.flags import Flag

MANUFACTURER = "DeepBrainPrint"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
#: Patient and study attributes copied from the flagged study into the result objects.
STUDY_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName")


def results_for_flag(flag: Flag, study: dict[str, str], software_version: str = "") -> list[Dataset]:
    """The SR and (where the flag has pictures) the Secondary Capture of one flag, in the flagged study."""
    reference = _reference_instance(flag, study)
    objects = [_structured_report(flag, reference, software_version)]
    picture = _evidence_montage(flag)
    if picture is not None:
        objects.append(_secondary_capture(reference, picture))
    return objects


def _reference_instance(flag: Flag, study: dict[str, str]) -> Dataset:
    """A stand-in for one instance of the flagged series: its study's patient and study modules, its series UID."""
    ds = Dataset()
    for keyword in STUDY_ATTRIBUTES:
        setattr(ds, keyword, str(study.get(keyword, "") or ""))
    ds.StudyInstanceUID = flag.study_instance_uid
    ds.SeriesInstanceUID = flag.series_instance_uid
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage: what the flagged series holds
    ds.SOPInstanceUID = str(study.get("ReferencedSOPInstanceUID") or generate_uid())
    ds.Modality = "MR"
    return ds


def _structured_report(flag: Flag, reference: Dataset, software_version: str) -> Dataset:
    import highdicom as hd

    def text(name: str, value: Any) -> hd.sr.TextContentItem:
        return hd.sr.TextContentItem(
            name=hd.sr.CodedConcept(value=name[:16].upper().replace(" ", "-"), scheme_designator="99DBP", meaning=name),
            value=str(value)[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )

    items = [
        text("Verdict", flag.verdict),
        text("Reason", flag.reason),
        text("Next step", flag.next_step),
        text("Fingerprint similarity", "-" if flag.score is None else f"{flag.score:.4f}"),
        text("Verification score", "-" if flag.verification_score is None else f"{flag.verification_score:.3f}"),
        text("Decided by", flag.decided_by or "-"),
        text("Matched patient (keyed hash)", flag.matched_patient or "-"),
        text("Flag", flag.flag),
    ]
    for name, thresholds in (("Fingerprint thresholds", flag.thresholds),
                             ("Verification thresholds", flag.verification_thresholds)):
        if thresholds:
            items.append(text(name, f"{thresholds.get('model_version')}: match {thresholds.get('match'):.4g}, "
                                    f"mismatch {thresholds.get('mismatch'):.4g} ({thresholds.get('calibrated_on')})"))
    container = hd.sr.ContainerContentItem(
        name=hd.sr.CodedConcept(value="DBP-IDENTITY", scheme_designator="99DBP", meaning="Brain identity check"),
    )
    container.ContentSequence = items
    return hd.sr.ComprehensiveSR(
        evidence=[reference],
        content=container,
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description="DeepBrainPrint identity check",
        software_versions=software_version or None,
    )


def _secondary_capture(reference: Dataset, picture: np.ndarray) -> Dataset:
    import highdicom as hd

    capture = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=picture,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=generate_uid(),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "P"),
    )
    capture.SeriesDescription = "DeepBrainPrint evidence"
    assert capture.SOPClassUID == SecondaryCaptureImageStorage
    return capture


def _evidence_montage(flag: Flag) -> np.ndarray | None:
    """The flag's pictures side by side on a black background, as an RGB array (None without pictures)."""
    if not flag.pictures:
        return None
    from PIL import Image

    images = [Image.open(io.BytesIO(p.png)).convert("RGB") for p in flag.pictures[:4]]
    height = max(i.height for i in images)
    canvas = Image.new("RGB", (sum(i.width for i in images) + 8 * (len(images) - 1), height))
    x = 0
    for image in images:
        canvas.paste(image, (x, (height - image.height) // 2))
        x += image.width + 8
    return np.asarray(canvas, dtype=np.uint8)
