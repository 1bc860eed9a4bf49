"""How the parts are connected: the DICOM node hands each complete series to the worker's dispatcher.

The node only knows it was given a callback (``on_series_complete``); which mode runs behind it (embedded thread or
Celery queue) is the worker's business, chosen by ``broker_url``.
"""

from __future__ import annotations

from deepbrainprint.settings import Settings
from dicom_node.completion import OnSeriesComplete
from dicom_node.scp import StorageNode
from dicom_node.types import CompletedSeries


def series_handler(settings: Settings) -> OnSeriesComplete:
    """The callback that queues a complete series for the worker configured by ``settings``."""
    from worker.dispatch import submit_completed_series

    config = settings.worker_config()

    def hand_on(completed: CompletedSeries) -> None:
        submit_completed_series(config, completed)

    return hand_on


def storage_node(settings: Settings) -> StorageNode:
    """The storage SCP of ``settings``, handing complete series to its worker (not started yet)."""
    return StorageNode(settings.node_config(), series_handler(settings))
