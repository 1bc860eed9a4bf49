"""What the worker needs to know, given explicitly (the application builds it from its settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fingerprint.identity.archive import ArchiveConfig


@dataclass(frozen=True)
class WorkerConfig:
    """The archive the worker records into, the spool it releases, the broker (empty: embedded mode), retries, and
    the Orthanc the verdicts go back to (empty URL: no write-back).

    The ledger (jobs and their states) lives in the archive's store, so every worker of one site shares it.
    """

    archive: ArchiveConfig
    spool_dir: Path
    broker_url: str = ""  # empty: embedded mode (no server); "redis://127.0.0.1:6379/0" in service mode
    queue_prefix: str = "dbp"  # Celery queues are <prefix>.fingerprint and <prefix>.writeback
    task_max_attempts: int = 8
    retry_backoff_max_s: float = 300.0
    visibility_timeout_s: float = 300.0  # a dead host's unacknowledged series are redelivered after this long
    orthanc_url: str = ""
    orthanc_username: str = ""
    orthanc_password: str = ""

    @property
    def ledger_url(self) -> str:
        return self.archive.store_url
