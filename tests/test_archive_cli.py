"""``enroll`` / ``query`` / ``calibrate`` / ``reindex`` on real DICOM series: JSON output, verdicts, exit codes.

Real series from ``shared/data`` go through the real pipeline and the model in use. Planted cases are made the way
they happen in a PACS: a real series re-sent under a new SeriesInstanceUID with the same PatientID (``consistent``),
under another PatientID (``possible_duplicate``), or filed under a different patient's PatientID
(``identity_mismatch``). The thresholds are calibrated on these real series (halfway between the two different
people's similarity and identity), because an untrained model cannot be asked to separate people; the plumbing from
DICOM to verdict is what is tested here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from deepbrainprint.cli.app import app
from deepbrainprint.settings import load_settings
from fingerprint.identity.archive import Archive
from fingerprint.identity.calibration import (
    Thresholds,
    resolve_thresholds,
    save_thresholds,
    site_thresholds_path,
)
from fingerprint.identity.store import Store
from fingerprint.imaging.dicom_read import iter_files, read_dicom_file
from fingerprint.types import FingerprintResult

torch.set_num_threads(1)
PERSON_A = "t1/siemens-avanto-1.5t-axial-postcontrast"  # a real person (2D axial, post-contrast: quick to align)
PERSON_B = "t1/philips-elition-3t-sag-gz"  # another real man (3D MPRAGE, gzip-wrapped files)


def cli(*args: str) -> tuple[int, list[dict], str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, lines, result.stderr


def refile(src: Path, dst: Path, patient_id: str | None = None) -> Path:
    """Copy a real series as a PACS re-send would: new Series/SOP Instance UIDs, optionally another PatientID."""
    dst.mkdir(parents=True)
    series_uid = generate_uid()
    for i, path in enumerate(iter_files(src)):
        ds = read_dicom_file(path)
        if ds is None:
            continue
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if patient_id is not None:
            ds.PatientID = patient_id
        ds.save_as(dst / f"{i:04d}.dcm")
    return dst


def patient_id_of(folder: Path) -> str:
    return str(read_dicom_file(next(iter_files(folder)), stop_before_pixels=True).PatientID)


@pytest.fixture(scope="module")
def real_pair(shared_data, tmp_path_factory, real_slice):
    """Two real people and thresholds calibrated on their real fingerprints with the model in use."""
    work = tmp_path_factory.mktemp("real")
    settings = load_settings(home=work, index_dir=work / "probe")
    with Archive(settings.archive_config()) as probe:
        model = probe.model
    a, b = model.embed(np.stack([real_slice(shared_data / PERSON_A).pixels, real_slice(shared_data / PERSON_B).pixels]))
    similarity = float(a @ b)
    mid = (similarity + 1.0) / 2
    assert mid < 1.0 - 1e-7, "two different people gave identical fingerprints"
    thresholds = Thresholds(model.model_version, mid, mid, 0.001, "calibrated", {"set": "two real series (test)"})
    return {"a": shared_data / PERSON_A, "b": shared_data / PERSON_B, "thresholds": thresholds}


def new_index(tmp_path: Path, thresholds: Thresholds) -> Path:
    index = tmp_path / "archive"
    save_thresholds(thresholds, site_thresholds_path(load_settings(home=tmp_path, index_dir=index).resolved_index_dir))
    return index


@pytest.mark.slow
def test_every_verdict_on_real_series_through_the_cli(real_pair, tmp_path):
    index = new_index(tmp_path, real_pair["thresholds"])
    person_a, person_b = real_pair["a"], real_pair["b"]

    code, lines, err = cli("enroll", person_a, person_b, "--index", index, "--json", "--no-progress", "--show-paths")
    assert code == 0, err
    assert [l["series_dir"] for l in lines] == [str(person_a), str(person_b)]
    assert [l["series"].split()[0] for l in lines] == ["1/2", "2/2"]  # the label, printed with or without paths
    assert [l["verdict"] for l in lines] == ["new_patient", "new_patient"]
    assert lines[1]["evidence"]["thresholds"]["source"] == "calibrated"

    code, lines, err = cli("enroll", person_a, person_b, "--index", index, "--json", "--no-progress")
    assert code == 0 and lines == [] and "2 already recorded" in err  # resumable: nothing re-done

    same = refile(person_a, tmp_path / "a-resent")
    code, lines, _ = cli("query", same, "--index", index, "--json", "--top-k", "2", "--show-paths")
    assert code == 0
    (out,) = lines
    assert out["series_dir"] == str(same) and out["verdict"] == "consistent"
    assert out["score"] == pytest.approx(1.0, abs=1e-5) and not out["recorded"]
    assert out["neighbours"][0]["same_patient_id"] and len(out["neighbours"]) == 2

    duplicate = refile(person_a, tmp_path / "a-other-id", patient_id="DBP-TEST-OTHER-ID")
    code, lines, _ = cli("query", duplicate, "--index", index, "--json")
    assert code == 4 and lines[0]["verdict"] == "possible_duplicate"
    assert lines[0]["matched_patient_id_hash"] == lines[0]["neighbours"][0]["patient_id_hash"]

    swapped = refile(person_a, tmp_path / "a-filed-as-b", patient_id=patient_id_of(person_b))
    code, lines, _ = cli("query", swapped, "--index", index, "--json")
    assert code == 4 and lines[0]["verdict"] == "identity_mismatch"
    assert lines[0]["score"] < real_pair["thresholds"].mismatch
    assert lines[0]["matched_patient_id_hash"] == duplicate_hash_of(lines[0], same_as=person_a, index=index)

    code, lines, _ = cli("enroll", duplicate, "--index", index, "--json", "--no-progress")
    assert code == 4 and lines[0]["verdict"] == "possible_duplicate" and lines[0]["recorded"]
    text_out = json.dumps(lines)
    assert patient_id_of(person_a) not in text_out and "DBP-TEST-OTHER-ID" not in text_out

    code, _, _ = cli("query", same, "--index", index)  # human-readable form
    assert code == 0


def duplicate_hash_of(out: dict, same_as: Path, index: Path) -> str:
    """The stored hash of the series at ``same_as`` (the PatientID the swapped series really belongs to)."""
    with Archive(load_settings(index_dir=index, home=index.parent).archive_config()) as arch:
        return arch.hash_patient_id(patient_id_of(same_as))


def test_unusable_series_are_rejected_with_reasons_and_exit_3(shared_data, tmp_path):
    index = tmp_path / "archive"
    code, lines, err = cli("query", shared_data / "hard" / "transfer-syntaxes", "--index", index, "--json")
    assert code == 3, err
    assert all(l["verdict"] == "rejected" and l["rejected"] and not l["recorded"] for l in lines)
    code, lines, err = cli("enroll", shared_data / "hard" / "12bit", "--index", index, "--json", "--no-progress")
    assert code == 3 and lines and all(l["verdict"] == "rejected" and l["recorded"] for l in lines), err
    code, again, _ = cli("enroll", shared_data / "hard" / "12bit", "--index", index, "--json", "--no-progress")
    assert again == []  # recorded rejections are not retried


def test_nothing_found_and_usage_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not dicom")
    assert cli("query", tmp_path / "empty", "--index", tmp_path / "a", "--json")[0] == 5
    assert cli("enroll", tmp_path / "empty", "--index", tmp_path / "a", "--no-progress")[0] == 5
    assert cli("query", tmp_path / "missing", "--index", tmp_path / "a")[0] == 2
    assert cli("enroll", "--index", tmp_path / "a")[0] == 2


def test_console_script_help_documents_exit_codes():
    for command in ("enroll", "query", "calibrate", "reindex"):
        result = subprocess.run(
            [str(Path(sys.executable).parent / "deepbrainprint"), command, "--help"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0 and "Exit codes" in result.stdout and "--index" in result.stdout


def test_calibrate_writes_thresholds_for_the_model_in_use(tmp_path):
    rng = np.random.default_rng(0)
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    rows, slices = [], []
    for subject in range(8):
        head = rng.random((128, 128))
        for visit in range(3):
            rows.append(f"s{subject}v{visit},subject{subject},{visit},2021-0{visit + 1}-01,colin27,calibration")
            slices.append(head + rng.normal(0, 0.02, head.shape))
    (cohort / "cohort.csv").write_text("scan_id,subject_id,visit,date,base_head,split\n" + "\n".join(rows) + "\n")
    np.savez(cohort / "slices.npz", slices=np.stack(slices).astype(np.float16), scan_id=[r.split(",")[0] for r in rows])
    index = tmp_path / "archive"
    code, (out,), err = cli("calibrate", "--cohort", cohort, "--far", "0.01", "--index", index, "--json")
    assert code == 0, err
    assert out["details"]["same_pairs"] == 24 and out["details"]["different_pairs"] == 252
    stored = resolve_thresholds(out["model_version"], index_dir=load_settings(home=tmp_path, index_dir=index).resolved_index_dir)
    assert stored.source == "calibrated" and stored.match == out["match"] and stored.mismatch <= stored.match
    # The store holds it too, so a worker with another index folder on the same store decides the same way.
    store_url = f"sqlite:///{index}/store.sqlite"
    other_worker = load_settings(home=tmp_path, index_dir=tmp_path / "worker-2", store_url=store_url)
    with Archive(other_worker.archive_config()) as arch:
        used = arch.thresholds(out["model_version"])
        assert used.details["from"] == "store" and used.match == out["match"]


def test_reindex_re_embeds_from_stored_slices_without_dicom(real_pair, tmp_path):
    from fingerprint.model.encoder import save_encoder, seeded_encoder

    index = new_index(tmp_path, real_pair["thresholds"])
    copy = refile(real_pair["a"], tmp_path / "a")  # deleted after enroll: reindex must not need it
    assert cli("enroll", copy, "--index", index, "--no-progress")[0] == 0
    for path in iter_files(copy):
        path.unlink()
    weights = save_encoder(seeded_encoder(seed=12345), tmp_path / "model-2", {"model_version": "test-reindex-2"})
    code, (out,), err = cli("reindex", "--model", weights, "--index", index, "--json", "--no-progress")
    assert code == 0, err
    assert out["to"] == "test-reindex-2" and out["from"] == real_pair["thresholds"].model_version
    assert out["reindexed"] == 1 and out["new_patient"] == 1
    with Archive(load_settings(home=tmp_path, index_dir=index, model_path=weights).archive_config()) as arch:
        assert arch.store.model_versions() == {out["from"]: 1, "test-reindex-2": 1}
        assert arch.index_for("test-reindex-2").ntotal == 1
    code, (again,), _ = cli("reindex", "--model", weights, "--index", index, "--json", "--no-progress")
    assert again["reindexed"] == 0 and again["skipped"] == 1


@pytest.fixture
def orthanc_server(tmp_path):
    """A real Orthanc 1.10 (authenticated REST API) in its own folder and ports, stopped afterwards."""
    from dbp_orthanc import server

    if not Path(server.ORTHANC_BINARY).exists():
        pytest.skip(f"Orthanc not installed at {server.ORTHANC_BINARY}")
    instance = server.write_config(
        tmp_path / "orthanc",
        username="dbp-test",
        password="dbp-test-password",
        http_port=server.free_port(),
        dicom_port=server.free_port(),
        scp_ae_title="NOBODY",
        scp_port=server.free_port(),
        stable_age_s=3600,  # nothing is forwarded during the test
    )
    server.start(instance)
    yield instance
    server.stop(instance, timeout_s=0.0)  # thrown away: no need to wait for a clean shutdown


def test_enroll_from_orthanc_over_its_rest_api(real_pair, shared_data, orthanc_server, tmp_path, monkeypatch):
    import requests

    auth = (orthanc_server.username, orthanc_server.password)
    for path in [*iter_files(real_pair["a"]), next(iter_files(shared_data / "hard" / "12bit"))]:
        response = requests.post(f"{orthanc_server.url}/instances", data=path.read_bytes(), auth=auth, timeout=30)
        assert response.status_code == 200, response.text
    monkeypatch.setenv("DBP_ORTHANC_USERNAME", orthanc_server.username)
    monkeypatch.setenv("DBP_ORTHANC_PASSWORD", orthanc_server.password)
    index = new_index(tmp_path, real_pair["thresholds"])
    code, lines, err = cli("enroll", "--orthanc", orthanc_server.url, "--index", index, "--json", "--no-progress")
    assert code == 3, err  # the 12-bit test image is not a brain volume
    verdicts = sorted(l["verdict"] for l in lines)
    assert verdicts == ["new_patient", "rejected"]
    assert all(l["series"].endswith(f" orthanc:{l['source']['orthanc_id']}") for l in lines)
    assert orthanc_server.password not in json.dumps(lines)
    code, again, _ = cli("enroll", "--orthanc", orthanc_server.url, "--index", index, "--json", "--no-progress")
    assert code == 0 and again == []


@pytest.fixture(scope="module")
def real_people_enrolled(shared_data, tmp_path_factory, real_slice):
    """All real series (the decubitus man's four scans, then the five people of ``t1/``) enrolled with the shipped
    weights, their calibrated thresholds and the verification stage: ``{folder name: verdict}``.

    Recorded through the archive (decide and record, verification included) from the run's shared slices and brains,
    which other model-quality tests use too; enrolling through the CLI is tested above on two of these series."""
    home = tmp_path_factory.mktemp("real-people")
    settings = load_settings(home=home, index_dir=home / "archive")
    repeats = sorted((shared_data / "repeats").iterdir())
    people = sorted((shared_data / "t1").iterdir())
    lines = {}
    with Archive(settings.archive_config()) as arch:
        thresholds = arch.thresholds(arch.model_version)
        if arch.model_version.startswith("untrained") or thresholds.source == "fallback":
            pytest.skip(f"model {arch.model_version} has no calibrated thresholds: identity cannot be asked of it")
        assert arch.verification_thresholds() is not None, "the verification thresholds ship with the weights"
        for folder in [*repeats, *people]:
            sliced = real_slice(folder)
            result = FingerprintResult(arch.model.embed(sliced.pixels[None])[0], arch.model_version, sliced)
            lines[folder.name] = arch.decide_and_record(result, {"folder": str(folder)})
    return {"repeats": repeats, "people": people, "home": home, "lines": lines}


@pytest.mark.slow
def test_trained_model_links_the_decubitus_repeats(real_people_enrolled):
    """The man scanned in four positions (one PatientID): ``new_patient`` then ``consistent`` three times, each
    confirmed by the verification stage (his own earlier scans' brains)."""
    lines = real_people_enrolled["lines"]
    verdicts = [lines[p.name]["verdict"] for p in real_people_enrolled["repeats"]]
    assert verdicts == ["new_patient", "consistent", "consistent", "consistent"], lines
    assert all(lines[p.name]["decided_by"] == "verification" for p in real_people_enrolled["repeats"][1:])


@pytest.mark.slow
def test_the_trio_man_of_2010_is_linked_to_the_decubitus_man_of_2022(real_people_enrolled):
    """One man under two PatientIDs, twelve years, two scanners and two protocols apart (shared/data/README.md):
    the 2010 Trio series must come back ``possible_duplicate`` of the decubitus man's PatientID. His fingerprint
    similarity alone (0.985 with dbp-r18-synth-v2) cannot tell him from different real people of one site; the
    verification of the two brains can (0.63-0.75 against different people's 0.10-0.26 on these series)."""
    lines = real_people_enrolled["lines"]
    trio = lines["siemens-trio-3t-sag"]
    decubitus_hash = lines[real_people_enrolled["repeats"][0].name]["patient_id_hash"]
    assert trio["verdict"] == "possible_duplicate", trio
    assert trio["matched_patient_id_hash"] == decubitus_hash
    assert trio["decided_by"] == "verification" and trio["verification_score"] is not None
    matched = [e for e in trio["evidence"]["verified"] if e["patient_id_hash"] == decubitus_hash]
    assert matched and matched[0]["verification_id"]
    store = Store(load_settings(index_dir=real_people_enrolled["home"] / "archive").resolved_store_url)
    try:
        stored = store.verification(matched[0]["verification_id"])
    finally:
        store.close()
    assert stored["evidence_png"][:8] == b"\x89PNG\r\n\x1a\n" and stored["score"] == pytest.approx(trio["verification_score"], abs=1e-3)


@pytest.mark.slow
def test_the_four_other_real_people_stay_apart(real_people_enrolled):
    """The other four people of ``t1/`` (and the decubitus man) are different people: each ``new_patient``, decided
    by the verification stage, whatever their fingerprints' closeness (the Prisma man against the Skyra child
    reached 0.985 on the fingerprint, at its synthetic-calibrated match threshold)."""
    lines = real_people_enrolled["lines"]
    others = [p.name for p in real_people_enrolled["people"] if p.name != "siemens-trio-3t-sag"]
    verdicts = {name: lines[name]["verdict"] for name in others}
    assert all(v == "new_patient" for v in verdicts.values()), verdicts


def test_a_folder_mixing_two_series_is_split_by_series_uid(shared_data, tmp_path):
    """A PACS export with two series in one folder: each is queried on its own, and named by folder#uid."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for i, path in enumerate(iter_files(shared_data / PERSON_A)):
        (mixed / f"a{i:03d}").write_bytes(path.read_bytes())
    scout = next(iter_files(shared_data / "hard" / "12bit"))
    (mixed / "zz-other").write_bytes(scout.read_bytes())
    code, lines, err = cli("query", mixed, "--index", tmp_path / "archive", "--json", "--show-paths")
    assert code == 3, err
    assert sorted(l["verdict"] for l in lines) == ["new_patient", "rejected"]
    assert all(l["series_dir"].startswith(f"{mixed}#") for l in lines)
    assert {l["series_dir"].split("#")[1] for l in lines} == {l["series_instance_uid"] for l in lines}
