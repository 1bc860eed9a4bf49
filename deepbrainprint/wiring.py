"""How the parts are connected: the DICOM node hands each complete series to the worker's dispatcher.

The node only knows it was given a callback (``on_series_complete``, and the optional hint ``on_series_released``);
which mode runs behind it (embedded thread or Celery queue) is the worker's business, chosen by ``broker_url``.
"""

from __future__ import annotations

from pathlib import Path

from deepbrainprint.settings import Settings
from dicom_node.completion import OnSeriesComplete, OnSeriesReleased
from dicom_node.scp import StorageNode
from dicom_node.types import CompletedSeries


def series_handler(settings: Settings) -> OnSeriesComplete:
    """The callback that queues a complete series for the worker configured by ``settings``."""
    from worker.dispatch import submit_completed_series

    config = settings.worker_config()

    def hand_on(completed: CompletedSeries) -> None:
        submit_completed_series(config, completed)

    return hand_on


def release_handler(settings: Settings) -> OnSeriesReleased | None:
    """The callback that lets an idle embedded worker fingerprint a released series during its quiet time; None in
    service mode or when ``fingerprint_ahead`` is off."""
    if settings.broker_url or not settings.fingerprint_ahead:
        return None
    from worker.dispatch import fingerprint_released_series

    config = settings.worker_config()

    def released(series_key: str, folder: Path) -> None:
        fingerprint_released_series(config, series_key, folder)

    return released


def storage_node(settings: Settings) -> StorageNode:
    """The storage SCP of ``settings``, handing complete series to its worker (not started yet)."""
    return StorageNode(settings.node_config(), series_handler(settings), on_series_released=release_handler(settings))
