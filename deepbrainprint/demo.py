"""``deepbrainprint demo``: the whole product in one process on real heads, with a planted duplicate and mismatch.

What it does, in embedded mode (no server): takes real people, sends each series over a real DICOM association to
the in-process storage SCP under demo PatientIDs, lets the in-process worker fingerprint, verify and decide, and
prints the verdicts. Two cases are planted: one person filed under a second PatientID (``possible_duplicate``) and a
different person filed under an existing PatientID (``identity_mismatch``); everything else must raise no alarm.

Where ``../shared/data`` is present the people are all real and different: Colin27 (mricron-data), two heads of
``shared/data/people`` written as DICOM series by the project's writer, and the real Siemens Trio series of 2010;
the planted duplicate is the real one, a 2022 decubitus series of the same man (``shared/data/README.md``), sent as
scanned under a second PatientID. On a bare machine the demo falls back to Colin27, the MNI152 average and warped
copies of Colin27 (the MNI152 average shares Colin27's registration space, so that pair may be flagged there). The
archive lives in a fresh temporary folder unless ``--home`` is given.
"""

from __future__ import annotations

import queue
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fingerprint.locations import shared_data_dir

SHARED_DATA = shared_data_dir()
REAL_T1 = "t1/siemens-trio-3t-sag"
#: The same man as REAL_T1, twelve years later (shared/data/README.md): the demo's real planted duplicate.
REAL_REPEAT = "repeats/decubitus-HFS-t1-2d"
#: Two other real people (NIfTI heads, written as DICOM series by the project's writer).
REAL_PEOPLE = ("people/ixi-2mm/IXI012-HH-1211-T1_ds.nii.gz", "people/older-adults-2mm/Subj1_T1.nii.gz")
TRIO_2010 = "Siemens Trio man, 2010"
DECUBITUS_2022 = "same man, 2022 (decubitus)"
VERDICT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class DemoSeries:
    """One series the demo sends: which head, filed under which PatientID, and what a good model should say."""

    head: str
    patient_id: str
    orientation: str
    study_date: str
    expected: str
    note: str
    planted: bool = False
    person: str = ""  # who the head shows, when two heads show one person (default: the head's name)

    @property
    def who(self) -> str:
        return self.person or self.head


def load_heads() -> dict[str, Any]:
    """The people available here: SimpleITK heads (written as DICOM) or real DICOM folders (sent as scanned).

    With the shared data: Colin27, two real people, the Trio series (2010) and the same man's decubitus series
    (2022). Without: Colin27, MNI152 and warped copies of Colin27."""
    import SimpleITK as sitk

    from fingerprint.imaging.reference import load_colin27, load_mni152

    heads: dict[str, Any] = {"Colin27": load_colin27()}
    people = [SHARED_DATA / p for p in REAL_PEOPLE]
    if all(p.exists() for p in people) and (SHARED_DATA / REAL_T1).is_dir() and (SHARED_DATA / REAL_REPEAT).is_dir():
        for number, path in enumerate(people, 1):
            heads[f"real person {number}"] = sitk.ReadImage(str(path))
        heads[TRIO_2010] = SHARED_DATA / REAL_T1
        heads[DECUBITUS_2022] = SHARED_DATA / REAL_REPEAT
        return heads
    try:
        heads["MNI152"] = load_mni152(resolution=1)
    except ImportError:
        pass
    real = SHARED_DATA / REAL_T1
    if real.is_dir():
        from fingerprint.imaging.dicom_read import read_series

        heads["real T1 (Siemens Trio)"] = read_series(real).image
    while len(heads) < 3:  # a bare machine: other people are made from Colin27 the way the cohort makes subjects
        heads[f"Colin27 warped #{len(heads)}"] = warped_subject(heads["Colin27"], seed=len(heads))
    return heads


def warped_subject(head: Any, seed: int) -> Any:
    """Another subject from ``head``: a different size per axis and a smooth random deformation (the cohort's
    subject model), used only when fewer than three real heads are installed."""
    import numpy as np
    import SimpleITK as sitk

    from fingerprint.cohort.deform import (
        displacement_transform,
        scale_transform,
        smooth_noise_field,
    )

    rng = np.random.default_rng(1000 + seed)
    scale = tuple(float(s) for s in 1.0 + rng.choice([-1, 1], 3) * rng.uniform(0.05, 0.08, 3))
    transform = sitk.CompositeTransform([scale_transform(scale), displacement_transform(smooth_noise_field(rng))])
    return sitk.Resample(head, head, transform, sitk.sitkLinear, 0.0)


def plan(heads: dict[str, Any], quick: bool) -> list[DemoSeries]:
    """The series to send, in order (the real-people plan where the shared data is present)."""
    if DECUBITUS_2022 in heads:
        return real_people_plan(quick)
    return fallback_plan(heads, quick)


def real_people_plan(quick: bool) -> list[DemoSeries]:
    """Real, different people; the planted duplicate is one real man scanned in 2010 and again in 2022."""
    first_a = DemoSeries("Colin27", "DEMO-A", "axial", "20230201", "new_patient", "first scan of DEMO-A")
    again_a = DemoSeries("Colin27", "DEMO-A", "sagittal", "20240514", "consistent", "DEMO-A again, other orientation")
    first_b = DemoSeries("real person 1", "DEMO-B", "axial", "20230310", "new_patient", "first scan of DEMO-B")
    first_c = DemoSeries(TRIO_2010, "DEMO-C", "scanned", "20100701", "new_patient", "first scan of DEMO-C (real)")
    duplicate = DemoSeries(DECUBITUS_2022, "DEMO-D", "scanned", "20220401", "possible_duplicate",
                           "PLANTED: DEMO-C's man, 12 years later, under a new PatientID", planted=True,
                           person=TRIO_2010)
    mismatch = DemoSeries("real person 2", "DEMO-B", "coronal", "20250120", "identity_mismatch",
                          "PLANTED: another person filed under DEMO-B", planted=True)
    if quick:
        return [first_b, first_c, duplicate, mismatch]
    return [first_a, again_a, first_b, first_c, duplicate, mismatch]


def fallback_plan(heads: dict[str, Any], quick: bool) -> list[DemoSeries]:
    """A bare machine: the second head is MNI152 (another 'person'), then warped copies of Colin27."""
    others = [name for name in heads if name != "Colin27"]
    second = others[0] if others else "Colin27"
    third = others[1] if len(others) > 1 else None
    first_a = DemoSeries("Colin27", "DEMO-A", "axial", "20230201", "new_patient", "first scan of DEMO-A")
    again_a = DemoSeries("Colin27", "DEMO-A", "sagittal", "20240514", "consistent", "DEMO-A again, other orientation")
    first_b = DemoSeries(second, "DEMO-B", "axial", "20230310", "new_patient", "first scan of DEMO-B")
    first_c = DemoSeries(third, "DEMO-C", "sagittal", "20230601", "new_patient", "first scan of DEMO-C") if third else None
    duplicate = DemoSeries("Colin27", "DEMO-D", "coronal", "20240930", "possible_duplicate",
                           "PLANTED: DEMO-A's head under a new PatientID", planted=True)
    mismatch = DemoSeries(third or "Colin27", "DEMO-B", "axial", "20250120", "identity_mismatch",
                          "PLANTED: another head filed under DEMO-B", planted=True)
    if quick:
        return [first_a, first_b, duplicate, mismatch]
    return [s for s in (first_a, again_a, first_b, first_c, duplicate, mismatch) if s is not None]


def write_demo_series(heads: dict[str, Any], item: DemoSeries, out_dir: Path) -> list[Path]:
    """The series' files: a head written by the project's writer, or a real series re-filed under the demo's
    PatientID (its name and ID replaced, nothing else changed)."""
    head = heads[item.head]
    if isinstance(head, Path):
        return refile_series(head, out_dir, item.patient_id)
    from fingerprint.imaging.dicom_write import write_series

    return write_series(head, out_dir, patient_id=item.patient_id, orientation=item.orientation,
                        study_date=item.study_date)


def refile_series(folder: Path, out_dir: Path, patient_id: str) -> list[Path]:
    """Copies of a real series' DICOM files with PatientID and PatientName set to ``patient_id``."""
    import pydicom

    from fingerprint.imaging.dicom_read import iter_files, read_dicom_file

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for number, path in enumerate(iter_files(folder)):
        dataset = read_dicom_file(path)
        if dataset is None:
            continue
        dataset.PatientID = patient_id
        dataset.PatientName = patient_id
        target = out_dir / f"{number:05d}.dcm"
        pydicom.dcmwrite(target, dataset, enforce_file_format=True)
        written.append(target)
    return written


def run_demo(
    home: Path | None = None,
    quick: bool = False,
    echo: Callable[[str], Any] = print,
    on_result: Callable[[dict[str, Any]], Any] | None = None,
) -> int:
    """Run the demo; returns the exit status (0 when every series got a verdict). ``on_result`` receives one
    JSON-ready dict per series (what ``--json`` prints): the plan, the planted label and the verdict."""
    import pydicom
    from dbp_orthanc.server import free_port

    from deepbrainprint.settings import load_settings
    from deepbrainprint.wiring import storage_node
    from dicom_node.scu import send_instances
    from worker.embedded import EmbeddedWorker

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="deepbrainprint-demo-"))
    keep_archive = home is not None
    home = Path(home) if home else work / "home"
    settings = load_settings(home=home, port=free_port(), quiet_time_s=1.0, broker_url="", orthanc_url="",
                             allowed_calling_aes="", bind_address="127.0.0.1")
    echo("Loading real heads ...")
    heads = load_heads()
    items = plan(heads, quick)
    where = f"; archive kept in {home}" if keep_archive else ""
    echo(f"Heads: {', '.join(heads)}. Sending {len(items)} series to the in-process SCP "
         f"({settings.ae_title} on port {settings.port}){where}\n")
    verdicts: queue.Queue[dict[str, Any]] = queue.Queue()
    worker = EmbeddedWorker(settings.worker_config(), on_verdict=lambda job, verdict: verdicts.put(verdict)).start()
    node = storage_node(settings).start()
    rows = []
    try:
        for number, item in enumerate(items, 1):
            files = write_demo_series(heads, item, work / f"series-{number}")
            series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
            result = send_instances(files, node.port, called_ae=settings.ae_title, calling_ae="DEMO-MODALITY")
            if not result.all_ok:
                echo(f"  series {number}: the SCP refused some instances")
            verdict = _wait_for(verdicts, series_uid)
            rows.append((number, item, verdict, len(files)))
            echo(_row(number, item, verdict, len(files)))
            if on_result is not None:
                on_result(_result(number, item, verdict))
        echo("")
        echo(calibrate_own_archive(settings))
        reports = home / "reports" if keep_archive else Path(tempfile.mkdtemp(prefix="deepbrainprint-demo-report-"))
        echo(write_reports(settings, reports))
        echo(write_deid_qa(settings, heads, items, reports))
    finally:
        node.stop()
        worker.stop()
        for folder in work.glob("series-*"):  # the demo's DICOM files (hundreds of MB) are not kept
            shutil.rmtree(folder, ignore_errors=True)
        if not keep_archive:
            shutil.rmtree(work, ignore_errors=True)
    _summary(rows, echo, time.monotonic() - started)
    return 0 if all(v is not None for _, _, v, _ in rows) else 1


def write_reports(settings: Any, out_dir: Path) -> str:
    """The flags report of the demo's archive (HTML with the evidence pictures, CSV, JSON), kept after the demo in
    ``out_dir``. Returns the line to print."""
    from fingerprint.identity.store import Store
    from fingerprint.model.fingerprinter import load_model
    from fingerprint.reports.flags import collect_flags
    from fingerprint.reports.render import summary_line, write_flags_report

    store = Store(settings.resolved_store_url)
    try:
        flags = collect_flags(store, model=load_model(settings.model_path))
    finally:
        store.close()
    paths = write_flags_report(flags, out_dir, title="DeepBrainPrint demo: flags")
    return f"Flags report: {summary_line(flags)} -> {paths['html']} (+ flags.csv, flags.json)"


def write_deid_qa(settings: Any, heads: dict[str, Any], items: list[DemoSeries], out_dir: Path) -> str:
    """A de-identified export of the demo's first written head, checked against the demo's archive: one series keeps
    the face while claiming 113102 (clean recognizable visual features), one is defaced but keeps a PatientName.
    Both are that person's brain, so both link back. Returns the line to print."""
    import pydicom

    from fingerprint.identity.archive import Archive
    from fingerprint.imaging.canonical import align
    from fingerprint.imaging.dicom_write import write_series
    from fingerprint.imaging.face import remove_face
    from fingerprint.reports.deid_headers import mark_deidentified
    from fingerprint.reports.deid_qa import deid_qa, deid_summary, write_deid_report

    item = next(i for i in items if not isinstance(heads[i.head], Path))
    head = heads[item.head]
    export = out_dir / "deid-export"
    shutil.rmtree(export, ignore_errors=True)
    plan = [("face-kept", head, "DEMO-ANON-1", ["113100", "113102", "113107"], None),
            ("name-left", remove_face(head, align(head).transform), "DEMO-ANON-2", ["113100", "113107"], "Doe^Demo")]
    for folder, volume, pseudonym, codes, leftover_name in plan:
        for path in write_series(volume, export / folder, patient_id=pseudonym, orientation=item.orientation,
                                 study_date=item.study_date):
            ds = pydicom.dcmread(path)
            mark_deidentified(ds, codes)
            if leftover_name:
                ds.PatientName = leftover_name
            else:
                del ds.PatientName
            ds.save_as(path, enforce_file_format=True)
    with Archive(settings.archive_config()) as archive:
        rows = deid_qa(export, archive)
    paths = write_deid_report(rows, out_dir)
    shutil.rmtree(export, ignore_errors=True)  # hundreds of MB of DICOM; the report keeps what was found
    return f"De-identification QA of a de-identified copy: {deid_summary(rows)} -> {paths['html']}"


def calibrate_own_archive(settings: Any) -> str:
    """Calibrate the demo's archive from its own PatientIDs once it holds enough repeat patients (as a site would
    with ``calibrate --from-archive``); until then say how many more it needs. Returns the line to print."""
    from fingerprint.identity.archive import Archive
    from fingerprint.identity.site_calibration import (
        NotEnoughRepeats,
        calibrate_from_archive,
    )
    from fingerprint.identity.verification import METHOD_VERSION

    with Archive(settings.archive_config()) as archive:
        try:
            site = calibrate_from_archive(archive.store, archive.model_version, settings.calibration_far,
                                          METHOD_VERSION, site="demo")
        except NotEnoughRepeats as refusal:
            return (f"Site calibration: not yet ({refusal.counted_pairs} same-PatientID pairs, "
                    f"{refusal.needed_pairs} needed at {settings.calibration_far:g}); the shipped thresholds decide.")
        for thresholds in (site.fingerprint, site.verification):
            if thresholds is not None:
                archive.store.save_thresholds(thresholds.model_version, thresholds.as_json())
    v = site.verification
    return (f"Site calibration from this archive: verification match >= {v.match:.3f}, mismatch < {v.mismatch:.3f}"
            if v is not None else "Site calibration from this archive: fingerprint thresholds only (no brains)")


def _wait_for(verdicts: queue.Queue[dict[str, Any]], series_uid: str) -> dict[str, Any] | None:
    deadline = time.monotonic() + VERDICT_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            verdict = verdicts.get(timeout=1.0)
        except queue.Empty:
            continue
        if verdict.get("series_instance_uid") == series_uid:
            return verdict
    return None


def _result(number: int, item: DemoSeries, verdict: dict[str, Any] | None) -> dict[str, Any]:
    """One series of the demo as JSON: what was sent, what was expected, what the archive said."""
    got = verdict or {}
    return {
        "number": number,
        "head": item.head,
        "patient_id": item.patient_id,
        "study_date": item.study_date,
        "planted": item.planted,
        "expected": item.expected,
        "verdict": got.get("verdict"),
        "found": got.get("verdict") == item.expected,
        "score": got.get("score"),
        "verification_score": got.get("verification_score"),
        "decided_by": got.get("decided_by"),
        "model_version": got.get("model_version"),
    }


HEADER = (f"{'#':>2}  {'head':24s} {'orient.':9s} {'date':10s} {'filed as':9s} {'verdict':19s} "
          f"{'fingerprint / 3D check':>22s}  note")


def _row(number: int, item: DemoSeries, verdict: dict[str, Any] | None, instances: int) -> str:
    if number == 1:
        prefix = HEADER + "\n" + "-" * len(HEADER) + "\n"
    else:
        prefix = ""
    got = verdict.get("verdict", "?") if verdict else "NO VERDICT"
    score = verdict.get("score") if verdict else None
    score_text = f"{score:.3f}" if isinstance(score, (int, float)) else "-"
    checked = verdict.get("verification_score") if verdict else None
    score_text += f" / {checked:.2f}" if isinstance(checked, (int, float)) else " /  -  "
    date = f"{item.study_date[:4]}-{item.study_date[4:6]}-{item.study_date[6:]}"
    mark = "" if got == item.expected else f"  (expected {item.expected})"
    return (f"{prefix}{number:>2}  {item.head[:24]:24s} {item.orientation:9s} {date:10s} {item.patient_id:9s} "
            f"{got:19s} {score_text:>22s}  {item.note}{mark}")


def _summary(rows: list, echo: Callable[[str], Any], elapsed_s: float) -> None:  # type: ignore[type-arg]
    echo("")
    planted = [(n, item, v) for n, item, v, _ in rows if item.planted]
    for number, item, verdict in planted:
        got = verdict.get("verdict") if verdict else "no verdict"
        status = "found" if got == item.expected else "MISSED"
        echo(f"Planted #{number}: {item.note[len('PLANTED: '):]} -> expected {item.expected}, got {got} ({status})")
    versions = {v.get("model_version") for _, _, v, _ in rows if v}
    if any(str(version).startswith("untrained") for version in versions):
        echo("Model: untrained (random weights, no trained weights shipped yet): verdicts are not meaningful.")
    elif versions:
        echo(f"Model: {', '.join(sorted(map(str, versions)))}")
    total = sum(count for _, _, _, count in rows)
    echo(f"{len(rows)} series, {total} instances over real DICOM associations, {elapsed_s:.0f} s in all.")
