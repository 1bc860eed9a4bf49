"""What the storage node hands on: one complete series sitting in the spool.

Kept in its own module (no pynetdicom import) so the worker can import it cheaply, and JSON-convertible so it can
travel through a Celery broker or an embedded queue unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

#: Life cycle of a spooled series, stored in its state file.
#: receiving: instances arrive (or an association that sent some is still open, or the quiet time is not over)
#: complete:  released/aborted and quiet for ``quiet_time_s``; about to be handed on
#: queued:    ``on_series_complete`` returned without error; the worker owns it now
#: done:      the worker called ``Spool.mark_done``; new instances later make it ``receiving`` again
SERIES_STATES = ("receiving", "complete", "queued", "done")


@dataclass(frozen=True)
class CompletedSeries:
    """A series the node considers complete, handed to ``on_series_complete``.

    ``series_key`` is a hash of the SeriesInstanceUID (never PHI); ``path`` is the folder that holds only this
    series' DICOM files (``*.dcm``, one per SOP Instance UID; hidden ``.*.tmp`` files may appear while a re-send is
    being written). ``generation`` grows each time new instances reopen the series after a hand-on: pass it back to
    ``Spool.mark_done`` so that finishing an older hand-on does not close a newer one.
    """

    series_key: str
    path: Path
    instance_count: int
    calling_ae_title: str
    first_received: datetime
    last_received: datetime
    generation: int = 1

    def as_json(self) -> dict[str, Any]:
        """JSON-ready dict (paths and times as strings) for brokers and logs; contains no PHI."""
        data = asdict(self)
        data["path"] = str(self.path)
        data["first_received"] = self.first_received.isoformat()
        data["last_received"] = self.last_received.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CompletedSeries:
        """Inverse of :meth:`as_json`."""
        return cls(
            series_key=str(data["series_key"]),
            path=Path(data["path"]),
            instance_count=int(data["instance_count"]),
            calling_ae_title=str(data["calling_ae_title"]),
            first_received=datetime.fromisoformat(data["first_received"]),
            last_received=datetime.fromisoformat(data["last_received"]),
            generation=int(data.get("generation", 1)),
        )
