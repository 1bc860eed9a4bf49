"""How the commands that read series folders (``fingerprint``, ``enroll``, ``query``) name a series in their output.

Never by its folder: folder names in PACS exports often carry patients' names (``DOE^JOHN_12345/t1``), and this
output ends up in logs and cron mails. A series is named by a label instead, and its folder and the full text of an
unexpected error are printed only when the operator asks for them with ``--show-paths``. Light on purpose (no
heavy import at module level): ``--help`` of every command loads it.
"""

from __future__ import annotations

from typing import Annotated

import typer

#: How many hex digits of the series key a label shows: enough to tell a run's series apart, short to read.
KEY_DIGITS = 12

#: ``--show-paths``: the folder and the full error messages, printed only when asked for.
ShowPathsOption = Annotated[
    bool,
    typer.Option("--show-paths", help="Also print the folder each series was read from (series_dir, and "
                 "source.folder where there is a source) and full error messages. Off by default: folder names in "
                 "PACS exports often carry patients' names, and this output ends up in logs and cron mails."),
]


def series_label(position: int, total: int, series_instance_uid: str = "", orthanc_id: str = "") -> str:
    """``N/TOTAL`` (the series' place among those of this run) and ``series:<12 hex>`` (the start of the hash of its
    SeriesInstanceUID that the spool and the worker name it by: stable from run to run, and naming nobody), or
    ``orthanc:<id>`` (Orthanc's own hash-like ID) for a series read from Orthanc; its place only when neither is
    known (a series whose headers could not be read)."""
    if orthanc_id:
        return f"{position}/{total} orthanc:{orthanc_id}"
    if series_instance_uid:
        from dicom_node.spool import series_key_for

        return f"{position}/{total} series:{series_key_for(series_instance_uid)[:KEY_DIGITS]}"
    return f"{position}/{total}"

