"""The Celery app for service and scaled-out modes (broker: Redis).

Delivery guarantees, and why: ``acks_late`` + ``task_reject_on_worker_lost`` (a worker killed mid-series leaves its
message to be delivered again, and tasks are idempotent through the ledger, so the redelivery is harmless);
``worker_prefetch_multiplier = 1`` (a fingerprint takes seconds; prefetching would park series behind a busy worker
while another idles); JSON only (no pickle from the network); no result backend (verdicts live in the store).

Routing: ``dbp.process_series`` (the heavy step) goes to ``<prefix>.fingerprint``, consumed by as many workers as
there are cores/hosts; ``dbp.writeback`` (light, waits on Orthanc) to ``<prefix>.writeback`` so a slow or down
Orthanc never holds a fingerprinting slot. Decide-and-record stays consistent through the archive's lock (see
``worker.steps``). The prefix (``queue_prefix``) separates sites and test runs sharing one Redis.
"""

from __future__ import annotations

from celery import Celery

from fingerprint.config import Settings, load_settings

PROCESS_TASK = "dbp.process_series"
WRITEBACK_TASK = "dbp.writeback"

app = Celery("deepbrainprint", include=["worker.tasks"])
_settings: Settings | None = None


def fingerprint_queue(settings: Settings) -> str:
    return f"{settings.queue_prefix}.fingerprint"


def writeback_queue(settings: Settings) -> str:
    return f"{settings.queue_prefix}.writeback"


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings`` (broker, queues); tasks in this process use the same settings."""
    global _settings
    if not settings.broker_url:
        raise ValueError("service mode needs broker_url (e.g. redis://127.0.0.1:6379/0)")
    _settings = settings
    app.conf.update(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 3600},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=fingerprint_queue(settings),
        task_routes={
            PROCESS_TASK: {"queue": fingerprint_queue(settings)},
            WRITEBACK_TASK: {"queue": writeback_queue(settings)},
        },
        worker_hijack_root_logger=False,
    )
    return app


def current_settings() -> Settings:
    """The settings this worker process was configured with (from the environment when started by Celery itself)."""
    if _settings is None:
        configure(load_settings())
    assert _settings is not None
    return _settings


def send_process_series(settings: Settings, job_key: str) -> None:
    """Enqueue one series by job key (by name: the sending process never imports the task code or torch)."""
    if _settings is None or _settings.broker_url != settings.broker_url:
        configure(settings)
    app.send_task(PROCESS_TASK, args=[job_key], queue=fingerprint_queue(settings))


def send_writeback(settings: Settings, job_key: str, countdown_s: float = 0.0) -> None:
    app.send_task(WRITEBACK_TASK, args=[job_key], queue=writeback_queue(settings), countdown=countdown_s or None)
