"""A small storage SCU: send files or datasets to a storage SCP over one real association.

Used by the demo, the tests and the ingest benchmark to play the part of a PACS. Files are sent as they are on disk
(pynetdicom reads the encoded data set without decoding it), so compressed transfer syntaxes travel unchanged.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .transport import disable_nagle


class AssociationFailed(RuntimeError):
    """The SCP rejected or did not answer the association request (wrong AE title, not listening...)."""


@dataclass(frozen=True)
class SendResult:
    statuses: list[int]  # one DIMSE status per instance, in order (-1: no response)

    @property
    def all_ok(self) -> bool:
        return all(s == 0 for s in self.statuses)


def _load(item: Path | Dataset) -> Path | Dataset:
    """Files as paths (sent without decoding); gzip-wrapped files (``.dcm.gz``) are unwrapped into a dataset."""
    if isinstance(item, Dataset):
        return item
    path = Path(item)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return pydicom.dcmread(io.BytesIO(fh.read()))
    return path


def _context_key(item: Path | Dataset) -> tuple[str, str]:
    if isinstance(item, Dataset):
        syntax = item.file_meta.TransferSyntaxUID if "TransferSyntaxUID" in getattr(item, "file_meta", {}) else None
        return str(item.SOPClassUID), str(syntax or ExplicitVRLittleEndian)
    meta = pydicom.filereader.read_file_meta_info(item)
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def send_instances(
    items: Iterable[Path | Dataset],
    port: int,
    *,
    host: str = "127.0.0.1",
    called_ae: str = "DEEPBRAINPRINT",
    calling_ae: str = "DBP-SCU",
    abort_after: int | None = None,
) -> SendResult:
    """C-STORE every item (paths or datasets) over ONE association, then release it (or abort it after
    ``abort_after`` instances, to play a sender that dies mid-series). Raises :class:`AssociationFailed`."""
    loaded = [_load(item) for item in items]
    keys = sorted({_context_key(item) for item in loaded})
    ae = AE(ae_title=calling_ae)
    contexts = []
    for sop_class, syntax in keys:  # one context per (class, syntax): the SCP accepts each exactly
        contexts.append(build_context(UID(sop_class), [UID(syntax)]))
    if len(contexts) > 127:
        raise ValueError("too many distinct SOP class / transfer syntax pairs for one association")
    assoc = ae.associate(
        host, port, contexts=contexts, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)]
    )
    if not assoc.is_established:
        raise AssociationFailed(f"association to {called_ae}@{host}:{port} was rejected or failed")
    statuses: list[int] = []
    try:
        for index, item in enumerate(loaded):
            if abort_after is not None and index >= abort_after:
                break
            response = assoc.send_c_store(item)
            statuses.append(int(response.Status) if "Status" in response else -1)
    finally:
        if abort_after is not None:
            assoc.abort()
        else:
            assoc.release()
    return SendResult(statuses)


def echo(port: int, *, host: str = "127.0.0.1", called_ae: str = "DEEPBRAINPRINT", calling_ae: str = "DBP-SCU") -> int:
    """C-ECHO; returns the status (0 = the node answers). Raises :class:`AssociationFailed`."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise AssociationFailed(f"association to {called_ae}@{host}:{port} was rejected or failed")
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if "Status" in status else -1
    finally:
        assoc.release()


def dicom_files(folder: Path) -> Sequence[Path]:
    """The files of a folder that look like DICOM (``*.dcm``, ``*.dcm.gz``, or extension-less), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and (p.suffix in ("", ".dcm", ".gz", ".ima")))
