"""The Celery app for service and scaled-out modes (broker: Redis).

Delivery guarantees, and why: ``acks_late`` + ``task_reject_on_worker_lost`` (a worker killed mid-series leaves its
message to be delivered again, and tasks are idempotent through the ledger, so the redelivery is harmless); a whole
host that dies takes its unacknowledged messages with it until Redis's visibility timeout
(``visibility_timeout_s``, 5 minutes by default) hands them to another worker, which looks for them every tenth of
that timeout;
``worker_prefetch_multiplier = 1`` (a fingerprint takes seconds; prefetching would park series behind a busy worker
while another idles); JSON only (no pickle from the network); no result backend (verdicts live in the store).

Routing: ``dbp.process_series`` (the heavy step) goes to ``<prefix>.fingerprint``, consumed by as many workers as
there are cores/hosts; ``dbp.writeback`` (light, waits on Orthanc) to ``<prefix>.writeback`` so a slow or down
Orthanc never holds a fingerprinting slot. Decide-and-record stays consistent through the archive's lock (see
``worker.steps``). The prefix (``queue_prefix``) separates sites and test runs sharing one Redis.
"""

from __future__ import annotations

from celery import Celery

from worker.config import WorkerConfig

PROCESS_TASK = "dbp.process_series"
WRITEBACK_TASK = "dbp.writeback"

app = Celery("deepbrainprint", include=["worker.tasks"])
_config: WorkerConfig | None = None


def fingerprint_queue(config: WorkerConfig) -> str:
    return f"{config.queue_prefix}.fingerprint"


def writeback_queue(config: WorkerConfig) -> str:
    return f"{config.queue_prefix}.writeback"


def configure(config: WorkerConfig) -> Celery:
    """Point the app at ``config`` (broker, queues); tasks in this process use the same config."""
    global _config
    if not config.broker_url:
        raise ValueError("service mode needs broker_url (e.g. redis://127.0.0.1:6379/0)")
    _config = config
    app.conf.update(
        broker_url=config.broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": config.visibility_timeout_s,
            # kombu looks for expired messages every interval x throttle seconds (100 s by default): every tenth of
            # the visibility timeout instead (10 s at most, 1 s at least), one cheap Redis scan per worker each time.
            "unacked_restore_interval": max(1, min(10, int(config.visibility_timeout_s / 10))),
            "unacked_restore_throttle": 1,
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_default_queue=fingerprint_queue(config),
        task_routes={
            PROCESS_TASK: {"queue": fingerprint_queue(config)},
            WRITEBACK_TASK: {"queue": writeback_queue(config)},
        },
        worker_hijack_root_logger=False,
    )
    return app


def current_config() -> WorkerConfig:
    """The config this worker process was configured with (``deepbrainprint worker`` configures it before the pool
    forks, so every pool process has it)."""
    if _config is None:
        raise RuntimeError("the Celery app is not configured: start workers with `deepbrainprint worker`")
    return _config


def send_process_series(config: WorkerConfig, job_key: str) -> None:
    """Enqueue one series by job key (by name: the sending process never imports the task code or torch)."""
    if _config is None or _config.broker_url != config.broker_url:
        configure(config)
    app.send_task(PROCESS_TASK, args=[job_key], queue=fingerprint_queue(config))


def send_writeback(config: WorkerConfig, job_key: str, countdown_s: float = 0.0) -> None:
    app.send_task(WRITEBACK_TASK, args=[job_key], queue=writeback_queue(config), countdown=countdown_s or None)
