"""Settings, one place for every part of the product; each part gets only its own, as an explicit config.

Values come from (later wins): the defaults below, a TOML file (``--config`` or ``$DBP_CONFIG``), and environment
variables ``DBP_<FIELD>`` (upper case). Secrets (the PatientID hash key, Orthanc password, store and broker URLs
with their passwords, the dashboard's key) are read from the environment or from a secrets file, never from command
lines, so they do not leak into process listings: ``DBP_<FIELD>_FILE`` (or ``<field>_file`` in the TOML file) names a
file whose content (less a final newline) is the value, the way Docker and systemd hand secrets over, so the value
sits neither in the environment nor in a committed configuration.

The parts never see this class: :meth:`Settings.node_config`, :meth:`Settings.archive_config` and
:meth:`Settings.worker_config` build the plain configs the DICOM node, the fingerprint library and the worker take.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_node.config import NodeConfig
    from fingerprint.identity.archive import ArchiveConfig
    from worker.config import WorkerConfig


def _default_home() -> Path:
    return Path(os.environ.get("DBP_HOME", Path.home() / ".deepbrainprint")).expanduser()


@dataclass
class Settings:
    """All settings. Each part reads only its own fields; add new fields with a default and a comment."""

    home: Path = field(default_factory=_default_home)

    # --- fingerprint library -------------------------------------------------------------------------------------
    model_path: Path | None = None  # None: the weights shipped in fingerprint/weights/
    slice_method: str = "anatomical"  # or "middle" (the paper's protocol: middle of the array)
    # How fingerprints are computed: "auto" (ONNX Runtime float32 where installed, else torch), "torch", "onnx", or
    # "int8" (the shipped 8-bit graph: faster, its own model version <version>+int8 and thresholds; reindex to switch)
    model_runtime: str = "auto"

    # --- identity archive (store + index) --------------------------------------------------------------------------
    index_dir: Path | None = None  # None: <home>/index
    store_url: str | None = None  # None: sqlite:///<index_dir>/store.sqlite ; or postgresql+psycopg://...
    faiss_factory: str = "auto"  # exact up to index.AUTO_EXACT_UP_TO, HNSW (PCA space) above; "Flat"; or a factory
    patient_id_hash_key: str = ""  # keyed hash of PatientIDs; empty: a random key is created in <index_dir>
    keep_clear_patient_id: bool = False  # sites that want the clear PatientID stored too
    top_k: int = 5
    faiss_search_params: str = ""  # approximate indexes: e.g. "efSearch=64" (HNSW), "nprobe=16" (IVF); "" = defaults
    calibration_far: float = 0.001  # false-alarm rate `calibrate` picks thresholds for (0.1%)
    site_name: str = ""  # named in calibrations from the archive and their plots; empty: the index folder's name
    faiss_threads: int = 1  # FAISS OpenMP threads; one query at a time: 2 threads made decide 7x slower here
    verification: bool = True  # the 3D verification stage decides where it can (fingerprint.identity.verification)
    verify_own_scans: int = 2  # earlier scans of the same PatientID verified (the most similar fingerprints)
    verify_other_patients: int = 3  # other PatientIDs verified (best scan each, most similar fingerprints first)
    evidence_pictures: bool = True  # keep each verification's checkerboard picture in the store
    verification_threads: int = 2  # candidates of one verification round verified side by side (one thread each)
    # Embedded mode: an idle worker fingerprints a series whose sender released the association while its quiet time
    # runs, and the hand-on uses it if the folder is unchanged (fingerprint.identity.ahead); the verdict waits as ever
    fingerprint_ahead: bool = True

    # --- DICOM node ----------------------------------------------------------------------------------------------
    ae_title: str = "DEEPBRAINPRINT"
    port: int = 11112
    spool_dir: Path | None = None  # None: <home>/spool
    quiet_time_s: float = 5.0  # a series is complete when no instance arrived for this long after release
    open_quiet_time_s: float = 60.0  # ... or for this long while its association stays open (senders that keep one)
    bind_address: str = "127.0.0.1"  # where the SCP listens; "0.0.0.0" for all interfaces (needs the allow-list)
    # DICOM has no passwords: calling AE titles allowed to associate, comma-separated. Empty: any caller, but only
    # while bound to loopback (the SCP refuses to start on another address without a list); "*": any, explicitly.
    allowed_calling_aes: str = ""
    dicom_network_timeout_s: float = 60.0  # a silent peer's association is aborted after this (keeps what it sent)
    dicom_tls_cert_file: Path | None = None  # with a key: the SCP accepts TLS associations only
    dicom_tls_key_file: Path | None = None
    dicom_tls_ca_file: Path | None = None  # with it, callers must present a certificate this CA signed
    spool_keep_done_s: float = 7 * 86400.0  # finished series leave the spool after this long; 0 keeps them forever

    # --- worker ----------------------------------------------------------------------------------------------------
    broker_url: str = ""  # empty: embedded mode (no server); "redis://127.0.0.1:6379/0" in service mode
    queue_prefix: str = "dbp"  # Celery queues are <prefix>.fingerprint and <prefix>.writeback (one set per site/test)
    task_max_attempts: int = 8  # a series whose processing keeps failing on transient errors is given up after this
    retry_backoff_max_s: float = 300.0  # cap of the exponential back-off between attempts (processing and write-back)
    # A message taken by a worker host that then dies goes back to the queue after this long (Redis visibility timeout).
    # A series takes seconds; one still running after this is delivered again, harmlessly (the ledger makes it a no-op).
    broker_visibility_timeout_s: float = 300.0

    # --- Orthanc write-back ---------------------------------------------------------------------------------------
    orthanc_url: str = ""  # empty: no write-back
    orthanc_username: str = ""
    orthanc_password: str = ""

    # --- dashboard --------------------------------------------------------------------------------------------------
    dashboard_users: str = ""  # NAME:HASH,... (hashes from `deepbrainprint dashboard --hash-password`); empty: no login
    dashboard_secret_key: str = ""  # signs sessions; empty: a random key kept in <home>/dashboard.key (0600)
    dashboard_session_minutes: float = 30.0  # a session expires this long after login
    dashboard_port: int = 8080  # 127.0.0.1 only unless --host says otherwise

    # --- results as DICOM objects -----------------------------------------------------------------------------------
    results_destination: str = ""  # AE@HOST:PORT that `report send-results` C-STOREs SR + evidence to; empty: off

    @property
    def resolved_index_dir(self) -> Path:
        return Path(self.index_dir) if self.index_dir else self.home / "index"

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{self.resolved_index_dir / 'store.sqlite'}"

    @property
    def resolved_spool_dir(self) -> Path:
        return Path(self.spool_dir) if self.spool_dir else self.home / "spool"

    # --- what each part is given ---------------------------------------------------------------------------------
    def archive_config(self) -> ArchiveConfig:
        from fingerprint.identity.archive import ArchiveConfig

        return ArchiveConfig(
            index_dir=self.resolved_index_dir,
            store_url=self.resolved_store_url,
            model_path=self.model_path,
            model_runtime=self.model_runtime,
            slice_method=self.slice_method,
            faiss_factory=self.faiss_factory,
            faiss_search_params=self.faiss_search_params,
            faiss_threads=self.faiss_threads,
            top_k=self.top_k,
            patient_id_hash_key=self.patient_id_hash_key,
            keep_clear_patient_id=self.keep_clear_patient_id,
            verification=self.verification,
            verify_own_scans=self.verify_own_scans,
            verify_other_patients=self.verify_other_patients,
            evidence_pictures=self.evidence_pictures,
            verification_threads=self.verification_threads,
        )

    def node_config(self) -> NodeConfig:
        from dicom_node.config import NodeConfig

        return NodeConfig(
            spool_dir=self.resolved_spool_dir,
            ae_title=self.ae_title,
            port=int(self.port),
            bind_address=self.bind_address,
            allowed_calling_aes=self.allowed_calling_aes,
            quiet_time_s=self.quiet_time_s,
            open_quiet_time_s=self.open_quiet_time_s,
            dicom_network_timeout_s=self.dicom_network_timeout_s,
            spool_keep_done_s=self.spool_keep_done_s,
            tls_cert_file=self.dicom_tls_cert_file,
            tls_key_file=self.dicom_tls_key_file,
            tls_ca_file=self.dicom_tls_ca_file,
        )

    def worker_config(self) -> WorkerConfig:
        from worker.config import WorkerConfig

        return WorkerConfig(
            archive=self.archive_config(),
            spool_dir=self.resolved_spool_dir,
            broker_url=self.broker_url,
            queue_prefix=self.queue_prefix,
            task_max_attempts=self.task_max_attempts,
            retry_backoff_max_s=self.retry_backoff_max_s,
            visibility_timeout_s=self.broker_visibility_timeout_s,
            orthanc_url=self.orthanc_url,
            orthanc_username=self.orthanc_username,
            orthanc_password=self.orthanc_password,
        )


def _coerce(value: Any, current_type: Any) -> Any:
    text = str(current_type)
    if "bool" in text and isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    if "int" in text and "Path" not in text and isinstance(value, str):
        return int(value)
    if "float" in text and isinstance(value, str):
        return float(value)
    if "Path" in text and value not in (None, ""):
        return Path(value).expanduser()
    return value


def read_secret_file(path: Path) -> str:
    """A secret kept in a file of its own (Docker/systemd credentials): its content less one final newline."""
    text = Path(path).expanduser().read_text(encoding="utf-8")
    return text[:-1] if text.endswith("\n") else text


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, then the TOML file, then ``DBP_*`` environment variables, then ``overrides``."""
    values: dict[str, Any] = {}
    names = {f.name for f in fields(Settings)}
    path = config_file or (Path(os.environ["DBP_CONFIG"]) if os.environ.get("DBP_CONFIG") else None)
    if path is not None:
        with open(path, "rb") as fh:
            from_file = tomllib.load(fh)
        for key, value in from_file.items():  # <field>_file: the value is that file's content
            field_name = key.removesuffix("_file")
            if key.endswith("_file") and key not in names and field_name in names:
                values[field_name] = read_secret_file(Path(value))
            else:
                values[key] = value
    for name in names:
        secret_file = os.environ.get(f"DBP_{name.upper()}_FILE")
        if secret_file and f"{name}_file" not in names:  # dicom_tls_*_file are paths of their own
            values[name] = read_secret_file(Path(secret_file))
        env = os.environ.get(f"DBP_{name.upper()}")
        if env is not None:
            values[name] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name: f.type for f in fields(Settings)}
    unknown = set(values) - set(known)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(sorted(unknown))}")
    return Settings(**{k: _coerce(v, known[k]) for k, v in values.items()})
