"""Results any PACS can show: each open flag's SR and evidence Secondary Capture, C-STOREd into its study in a real
Orthanc, and readable there by pydicom."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from dbp_orthanc import server, writeback
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from fingerprint.identity.archive import Archive, ArchiveConfig
from fingerprint.identity.calibration import Thresholds
from fingerprint.identity.reviews import set_review
from fingerprint.identity.store import Store
from fingerprint.imaging.dicom_write import noise_series
from fingerprint.reports.flags import collect_flags

THRESHOLDS = Thresholds("test-model", 0.8, 0.6, 0.001, "explicit")


@pytest.fixture
def orthanc(tmp_path):
    instance = server.write_config(
        tmp_path / "orthanc", username="radiology", password="s3cret-results", http_port=server.free_port(),
        dicom_port=server.free_port(), scp_ae_title="NOBODY", scp_port=server.free_port(), stable_age_s=60,
    )
    server.start(instance)
    yield instance
    server.stop(instance, timeout_s=0.0)  # thrown away: no need to wait for a clean shutdown


def test_open_flags_land_in_their_study_as_sr_and_secondary_capture(orthanc, tmp_path, synthetic_fingerprint) -> None:
    client = writeback.make_client(orthanc.url, orthanc.username, orthanc.password)
    studies = {}
    for name in ("a1", "b1", "a-as-b"):  # three series in Orthanc, each in its own study
        series = noise_series(3, patient_id=f"PAT-{name}", seed=len(studies) + 1)
        for ds in series:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            client.upload(buffer.getvalue())
        studies[name] = (str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID))
    rng = np.random.default_rng(5)
    person_a, person_b = rng.normal(0, 1, 512), rng.normal(0, 1, 512)
    config = ArchiveConfig.at(tmp_path / "archive", verification=False)
    with Archive(config, model=object(), thresholds=THRESHOLDS) as archive:
        for base, patient, name in ((person_a, "PAT-A", "a1"), (person_b, "PAT-B", "b1"), (person_a, "PAT-B", "a-as-b")):
            study_uid, series_uid = studies[name]
            archive.decide_and_record(synthetic_fingerprint(base + rng.normal(0, 0.1, 512), patient, series_uid,
                                                            study_uid=study_uid), {})
    store = Store(config.store_url)
    (flag,) = collect_flags(store, pictures=False)
    assert flag.verdict == "identity_mismatch" and flag.series_instance_uid == studies["a-as-b"][1]

    env = {"DBP_ORTHANC_URL": orthanc.url, "DBP_ORTHANC_USERNAME": orthanc.username,
           "DBP_ORTHANC_PASSWORD": orthanc.password, "DBP_INDEX_DIR": str(config.index_dir), "DBP_HOME": str(tmp_path)}
    runner = CliRunner()
    to = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    result = runner.invoke(app, ["report", "send-results", "--to", to], env=env)
    assert result.exit_code == 0, result.output
    assert "results of 1 flags sent" in result.stdout
    study_id = client.studies.lookup(studies["a-as-b"][0])
    series = [client.get_json(f"series/{s}") for s in client.studies.get_series_ids(study_id)]
    modalities = sorted(s["MainDicomTags"].get("Modality") for s in series)
    assert modalities == ["MR", "OT", "SR"]  # the flagged MR series, and the results filed into its study
    for s in series:
        if s["MainDicomTags"].get("Modality") in ("SR", "OT"):
            (instance,) = s["Instances"]
            ds = pydicom.dcmread(io.BytesIO(client.get_binary(f"instances/{instance}/file")))
            assert ds.PatientID == "PAT-a-as-b" and ds.StudyInstanceUID == studies["a-as-b"][0]
            if ds.Modality == "SR":
                texts = {item.ConceptNameCodeSequence[0].CodeMeaning: item.TextValue for item in ds.ContentSequence}
                assert texts["Verdict"] == "identity_mismatch" and texts["Flag"] == flag.flag
                assert texts["Matched patient (keyed hash)"].startswith("h:")
            else:
                assert ds.pixel_array.ndim == 3 and ds.pixel_array.shape[2] == 3
    # Sent once: a second run sends nothing; a flag acknowledged is no longer open, so it is not sent either.
    assert "results of 0 flags sent" in runner.invoke(app, ["report", "send-results", "--to", to], env=env).stdout
    set_review(store, flag.flag, "resolved", "moved", "a.jones")
    again = runner.invoke(app, ["report", "send-results", "--to", to, "--again"], env=env)
    assert "results of 0 flags sent" in again.stdout
    store.close()
    # Off by default: no destination configured, nothing sent.
    assert runner.invoke(app, ["report", "send-results"], env=env).exit_code == 2
