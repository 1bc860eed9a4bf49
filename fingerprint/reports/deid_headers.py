"""Headers of a de-identified export: which attributes still identify someone, and which claims the data contradicts.

The attributes checked are those of the DICOM PS3.15 Basic Application Level Confidentiality Profile (Annex E,
table E.1-1) that a brain MRI export carries in practice: names, IDs, dates, the institution and its staff, device
serial numbers, free-text comments, private tags, and UIDs the identified archive also holds. An option the export
claims in ``DeidentificationMethodCodeSequence`` (e.g. 113107 *Retain Longitudinal Temporal Information Modified
Dates*, 113109 *Retain Device Identity*) allows what it names. A claim the data contradicts is a finding of its own:
``PatientIdentityRemoved`` = YES with a name left in, 113100 *Basic Application Confidentiality Profile* with an
attribute the profile removes, 113102 *Clean Recognizable Visual Features* with a face still in the pixels (the face
is measured by :mod:`fingerprint.imaging.face`; this module takes its answer).

Example::

    findings = header_findings(first_dataset, archive_uids={"1.2.3"}, face_present=False)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydicom.dataset import Dataset

BASIC_PROFILE = "113100"
CLEAN_PIXEL_DATA = "113101"
CLEAN_VISUAL_FEATURES = "113102"
RETAIN_FULL_DATES = "113106"
RETAIN_MODIFIED_DATES = "113107"
RETAIN_PATIENT_CHARACTERISTICS = "113108"
RETAIN_DEVICE_IDENTITY = "113109"
RETAIN_UIDS = "113110"
RETAIN_SAFE_PRIVATE = "113111"
RETAIN_INSTITUTION_IDENTITY = "113112"

#: (keyword, what it is, the option that allows keeping it, or None)
CHECKED: tuple[tuple[str, str, str | None], ...] = (
    ("PatientName", "name", None),
    ("OtherPatientNames", "name", None),
    ("PatientBirthName", "name", None),
    ("PatientMotherBirthName", "name", None),
    ("ReferringPhysicianName", "name", None),
    ("PerformingPhysicianName", "name", None),
    ("OperatorsName", "name", None),
    ("NameOfPhysiciansReadingStudy", "name", None),
    ("PhysiciansOfRecord", "name", None),
    ("RequestingPhysician", "name", None),
    ("OtherPatientIDs", "ID", None),
    ("OtherPatientIDsSequence", "ID", None),
    ("AccessionNumber", "ID", None),
    ("IssuerOfPatientID", "ID", None),
    ("MedicalRecordLocator", "ID", None),
    ("PatientBirthDate", "date", RETAIN_FULL_DATES),
    ("StudyDate", "date", RETAIN_FULL_DATES),
    ("SeriesDate", "date", RETAIN_FULL_DATES),
    ("AcquisitionDate", "date", RETAIN_FULL_DATES),
    ("ContentDate", "date", RETAIN_FULL_DATES),
    ("PatientAddress", "address", None),
    ("PatientTelephoneNumbers", "address", None),
    ("InstitutionName", "institution", RETAIN_INSTITUTION_IDENTITY),
    ("InstitutionAddress", "institution", RETAIN_INSTITUTION_IDENTITY),
    ("InstitutionalDepartmentName", "institution", RETAIN_INSTITUTION_IDENTITY),
    ("StationName", "device", RETAIN_DEVICE_IDENTITY),
    ("DeviceSerialNumber", "device", RETAIN_DEVICE_IDENTITY),
    ("ImageComments", "free text", None),
    ("PatientComments", "free text", None),
    ("AdditionalPatientHistory", "free text", None),
    ("RequestAttributesSequence", "free text", None),
)
#: Dates a "modified dates" option keeps (shifted), so their presence is no finding there.
DATE_KEYWORDS = {keyword for keyword, kind, _ in CHECKED if kind == "date"}


@dataclass(frozen=True)
class HeaderFinding:
    """One identifying attribute left in, or one claim the data contradicts."""

    kind: str  # name, ID, date, address, institution, device, free text, private tag, UID, claim
    attribute: str
    detail: str  # never the value itself: the report must not spread what it found

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def claimed_methods(ds: Dataset) -> set[str]:
    """The code values of ``DeidentificationMethodCodeSequence`` (e.g. {"113100", "113107"})."""
    return {str(item.get("CodeValue", "")) for item in ds.get("DeidentificationMethodCodeSequence", [])}


def header_findings(
    ds: Dataset, archive_uids: set[str] | None = None, face_present: bool | None = None
) -> list[HeaderFinding]:
    """What in ``ds`` (one instance of an export series) still identifies someone, and contradicted claims.

    ``archive_uids``: Study/Series/SOP Instance UIDs the identified archive holds (an export that kept them links
    back by UID). ``face_present``: the face check's answer for the series (None: not measured).
    """
    methods = claimed_methods(ds)
    findings: list[HeaderFinding] = []
    for keyword, kind, allowed_by in CHECKED:
        if keyword not in ds or _empty(ds.get(keyword)):
            continue
        if allowed_by is not None and allowed_by in methods:
            continue
        if keyword in DATE_KEYWORDS and RETAIN_MODIFIED_DATES in methods:
            continue
        findings.append(HeaderFinding(kind, keyword, f"{kind} present (basic profile: removed or replaced)"))
    private = sorted({f"({e.tag.group:04X},{e.tag.element:04X})" for e in ds.iterall() if e.tag.is_private})
    if private and RETAIN_SAFE_PRIVATE not in methods:
        findings.append(HeaderFinding("private tag", f"{len(private)} private tags",
                                      f"private attributes present, e.g. {', '.join(private[:3])}"))
    if archive_uids and RETAIN_UIDS not in methods:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            if str(ds.get(keyword, "")) in archive_uids:
                findings.append(HeaderFinding("UID", keyword, "the same UID as in the identified archive"))
    findings.extend(_contradicted_claims(ds, methods, findings, face_present))
    return findings


def _contradicted_claims(
    ds: Dataset, methods: set[str], findings: list[HeaderFinding], face_present: bool | None
) -> list[HeaderFinding]:
    out = []
    removed = str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
    names_or_ids = [f.attribute for f in findings if f.kind in {"name", "ID", "address", "UID"}]
    if removed and names_or_ids:
        out.append(HeaderFinding("claim", "PatientIdentityRemoved",
                                 f"says YES, yet {', '.join(names_or_ids[:4])} identify the patient"))
    if BASIC_PROFILE in methods and findings:
        out.append(HeaderFinding("claim", "DeidentificationMethodCodeSequence",
                                 f"claims {BASIC_PROFILE} (basic profile), yet {len(findings)} attributes it removes "
                                 "are present"))
    if CLEAN_VISUAL_FEATURES in methods and face_present:
        out.append(HeaderFinding("claim", "DeidentificationMethodCodeSequence",
                                 f"claims {CLEAN_VISUAL_FEATURES} (clean recognizable visual features), yet the face "
                                 "is in the pixels"))
    return out


def _empty(value: Any) -> bool:
    if value is None:
        return True
    if hasattr(value, "value"):
        value = value.value
    return str(value).strip() in {"", "[]", "None"}


def mark_deidentified(ds: Dataset, codes: list[str]) -> None:
    """Set what a de-identification tool says of its output: ``PatientIdentityRemoved`` YES and the method codes
    (e.g. ["113100", "113107"]). For the demo's and the tests' exports; it de-identifies nothing itself."""
    from pydicom.sequence import Sequence

    ds.PatientIdentityRemoved = "YES"
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", CODE_MEANINGS.get(code, code)
        items.append(item)
    ds.DeidentificationMethodCodeSequence = Sequence(items)


CODE_MEANINGS = {
    BASIC_PROFILE: "Basic Application Confidentiality Profile",
    CLEAN_PIXEL_DATA: "Clean Pixel Data Option",
    CLEAN_VISUAL_FEATURES: "Clean Recognizable Visual Features Option",
    RETAIN_FULL_DATES: "Retain Longitudinal Temporal Information Full Dates Option",
    RETAIN_MODIFIED_DATES: "Retain Longitudinal Temporal Information Modified Dates Option",
    RETAIN_PATIENT_CHARACTERISTICS: "Retain Patient Characteristics Option",
    RETAIN_DEVICE_IDENTITY: "Retain Device Identity Option",
    RETAIN_UIDS: "Retain UIDs Option",
    RETAIN_SAFE_PRIVATE: "Retain Safe Private Option",
    RETAIN_INSTITUTION_IDENTITY: "Retain Institution Identity Option",
}
