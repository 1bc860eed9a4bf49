"""De-identification QA on real heads: headers, brains that link back, faces (removed here by the test itself).

The identified archive holds a real person (a shared-data IXI head) under a named PatientID. The export holds three
series: that person again under a pseudonym with a clean header but the face kept while claiming 113102 (clean
recognizable visual features); the same person defaced but with a leftover PatientName under a basic-profile claim;
and another real person, defaced and clean, whom the archive does not hold. The report must find exactly the planted
problems.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from deepbrainprint.settings import load_settings
from fingerprint.identity.archive import Archive
from fingerprint.imaging.canonical import align
from fingerprint.imaging.dicom_write import write_series
from fingerprint.imaging.face import face_check, remove_face
from fingerprint.reports.deid_headers import header_findings, mark_deidentified

NAMED_ID = "DBP-NAMED-0042"


def deface(head: sitk.Image) -> sitk.Image:
    """The head with its face removed (the library's quickshear-like cut, through the head's own alignment)."""
    return remove_face(head, align(head).transform)


def claim(folder: Path, codes: list[str], remove_name: bool = True) -> None:
    """Make a folder's instances say they were de-identified (PatientIdentityRemoved, method codes)."""
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        mark_deidentified(ds, codes)
        if remove_name:
            del ds.PatientName
        ds.save_as(path, enforce_file_format=True)


PEOPLE = ("people/ixi-2mm/IXI012-HH-1211-T1_ds.nii.gz", "people/ixi-2mm/IXI013-HH-1212-T1_ds.nii.gz")


@pytest.fixture(scope="module")
def heads(shared_data):
    """Two real people, whole heads with their faces (the shared data's IXI heads, 2 mm)."""
    return {name: sitk.ReadImage(str(shared_data / path), sitk.sitkFloat32) for name, path in zip("ab", PEOPLE)}


def test_the_face_check_tells_a_face_from_a_defaced_head(heads, colin27) -> None:
    for head in heads.values():
        transform = align(head).transform
        assert face_check(head, transform)["face_present"]
        assert not face_check(deface(head), transform)["face_present"]
    # Colin27 as distributed is cut to the MNI box (y up to +91 mm): no face in front of the eyes to find.
    colin = sitk.BinShrink(colin27, [2, 2, 2])
    assert not face_check(colin, align(colin).transform)["face_present"]


def test_header_findings_name_what_is_left_and_the_contradicted_claims() -> None:
    ds = Dataset()
    ds.PatientName, ds.StudyDate, ds.DeviceSerialNumber = "Doe^Jane", "20240101", "SN-7"
    ds.PatientIdentityRemoved = "YES"
    item = Dataset()
    item.CodeValue = "113100"
    ds.DeidentificationMethodCodeSequence = Sequence([item])
    ds.add_new(0x00091001, "LO", "private note")
    found = {(f.kind, f.attribute) for f in header_findings(ds, face_present=True)}
    assert {("name", "PatientName"), ("date", "StudyDate"), ("device", "DeviceSerialNumber")} <= found
    assert ("private tag", "1 private tags") in found
    assert sum(1 for kind, _ in found if kind == "claim") == 2  # identity removed, basic profile
    assert all("Doe" not in f.detail and "SN-7" not in f.detail for f in header_findings(ds))
    # Options the export claims allow what they name: modified dates (113107) and device identity (113109).
    for code in ("113107", "113109"):
        extra = Dataset()
        extra.CodeValue = code
        ds.DeidentificationMethodCodeSequence.append(extra)
    kept = {f.attribute for f in header_findings(ds)}
    assert "StudyDate" not in kept and "DeviceSerialNumber" not in kept and "PatientName" in kept


def test_deid_qa_finds_the_planted_problems_and_nothing_else(heads, tmp_path) -> None:
    index = tmp_path / "identified"
    write_series(heads["a"], tmp_path / "named", patient_id=NAMED_ID, patient_name="Named^Patient")
    with Archive(load_settings(index_dir=index, home=tmp_path).archive_config()) as archive:
        assert archive.process(tmp_path / "named")["verdict"] == "new_patient"
    export = tmp_path / "export"
    write_series(heads["a"], export / "a-face-kept", patient_id="ANON-1", study_uid=generate_uid())
    claim(export / "a-face-kept", ["113100", "113102", "113107"])
    write_series(deface(heads["a"]), export / "b-name-left", patient_id="ANON-2", patient_name="Doe^Jane")
    claim(export / "b-name-left", ["113100", "113107"], remove_name=False)
    write_series(deface(heads["b"]), export / "c-clean", patient_id="ANON-3")
    claim(export / "c-clean", ["113100", "113102", "113107"])

    result = CliRunner().invoke(app, ["report", "deid-qa", str(export), "--against", str(index),
                                      "--out", str(tmp_path / "report"), "--json"])
    assert result.exit_code == 4, result.output
    a, b, c = _by_content(result.stdout)
    assert a["reidentifiable"] and b["reidentifiable"] and not c["reidentifiable"]
    assert a["linked_patient"] == b["linked_patient"] and a["linked_patient"].startswith("h:")
    assert a["face"]["face_present"] and not b["face"]["face_present"] and not c["face"]["face_present"]
    assert [f["attribute"] for f in a["header_findings"]] == ["DeidentificationMethodCodeSequence"]  # 113102 vs face
    assert {f["attribute"] for f in b["header_findings"]} == {"PatientName", "PatientIdentityRemoved",
                                                              "DeidentificationMethodCodeSequence"}
    assert c["header_findings"] == []
    assert "3 series: 2 with header findings, 2 re-identifiable by brain (67%), 1 with a face (1 of them " \
           "claiming 113102)" in result.stderr
    page = (tmp_path / "report" / "deid-qa.html").read_text()
    # The images are base64 text, where any three letters turn up by chance: look for the name in the page's text
    # and in each image's decoded bytes (a PNG text chunk would carry it in clear).
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]*)", page)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]*", "", page)
    assert len(images) == 3 and "Doe" not in text and NAMED_ID not in text
    assert not any(b"Doe^Jane" in base64.b64decode(image) or NAMED_ID.encode() in base64.b64decode(image) for image in images)


def _by_content(stdout: str) -> tuple[dict, dict, dict]:
    """The three export series' rows, told apart by their instance claims and findings (their folders differ only
    in the export's own naming, which the QA reports as the export folder with the series UID)."""
    rows = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 3
    a = next(r for r in rows if r["face"] and r["face"]["face_present"])
    b = next(r for r in rows if any(f["attribute"] == "PatientName" for f in r["header_findings"]))
    c = next(r for r in rows if r is not a and r is not b)
    return a, b, c


def test_an_export_held_in_orthanc_is_checked_over_its_rest_api(heads, tmp_path) -> None:
    """The export is an Orthanc server (a research PACS): its series are read over REST, with the export's own user
    and a password from the environment."""
    from dbp_orthanc import server, writeback

    index = tmp_path / "identified"
    write_series(heads["a"], tmp_path / "named", patient_id=NAMED_ID, patient_name="Named^Patient")
    with Archive(load_settings(index_dir=index, home=tmp_path).archive_config()) as archive:
        archive.process(tmp_path / "named")
    paths = write_series(heads["a"], tmp_path / "anon", patient_id="ANON-9")
    claim(tmp_path / "anon", ["113100", "113107"])
    instance = server.write_config(tmp_path / "orthanc", username="research", password="export-s3cret",
                                   http_port=server.free_port(), dicom_port=server.free_port(), scp_ae_title="NOBODY",
                                   scp_port=server.free_port(), stable_age_s=60)
    server.start(instance)
    try:
        client = writeback.make_client(instance.url, instance.username, instance.password)
        for path in paths:
            client.upload(path.read_bytes())
        result = CliRunner().invoke(
            app, ["report", "deid-qa", instance.url, "--export-user", "research", "--against", str(index),
                  "--out", str(tmp_path / "report"), "--json"],
            env={"DBP_EXPORT_ORTHANC_PASSWORD": "export-s3cret"},
        )
    finally:
        server.stop(instance, timeout_s=0.0)
    assert result.exit_code == 4, result.output  # the brain links back
    (row,) = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert row["series"].startswith("orthanc:") and row["reidentifiable"] and row["header_findings"] == []
    assert row["face"]["face_present"]
