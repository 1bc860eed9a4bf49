"""Every series an Orthanc server stores, read over its REST API as pydicom datasets (lazily, one series at a time).

What ``enroll --orthanc`` and the de-identification QA of an export held in Orthanc read: the series are listed at
once, each one's instances are downloaded only when its loader is called.

Example::

    for series in orthanc_series("http://127.0.0.1:8042", "user", password):
        datasets = series.load()
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
from orthanc_api_client import OrthancApiClient


@dataclass(frozen=True)
class OrthancSeries:
    """One stored series: Orthanc's id for it, its SeriesInstanceUID, and how to download its instances."""

    orthanc_id: str
    series_instance_uid: str
    load: Callable[[], list[pydicom.Dataset]]


def orthanc_series(url: str, username: str, password: str) -> list[OrthancSeries]:
    """Every series in the Orthanc at ``url``."""
    client = OrthancApiClient(url, user=username or None, pwd=password or None)

    def loader(series_id: str) -> Callable[[], list[pydicom.Dataset]]:
        def load() -> list[pydicom.Dataset]:
            ids = client.series.get_instances_ids(series_id)
            return [pydicom.dcmread(io.BytesIO(client.instances.get_file(i))) for i in ids]

        return load

    return [OrthancSeries(series_id, client.series.get(series_id).dicom_id, loader(series_id))
            for series_id in client.series.get_all_ids()]
