"""A small storage SCU: send files or datasets to a storage SCP over one real association.

Used by the demo, the tests and the ingest benchmark to play the part of a PACS. Files are sent as they are on disk
(pynetdicom reads the encoded data set without decoding it), so compressed transfer syntaxes travel unchanged.
"""

from __future__ import annotations

import gzip
import io
import logging
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .transport import disable_nagle

log = logging.getLogger(__name__)


class AssociationFailed(RuntimeError):
    """The SCP rejected or did not answer the association request (wrong AE title, not listening...)."""


@dataclass(frozen=True)
class SendResult:
    statuses: list[int]  # one DIMSE status per instance sent, in order

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
    response_timeout_s: float = 30.0,
    max_reassociations: int = 3,
    tls: ssl.SSLContext | None = None,
) -> SendResult:
    """C-STORE every item (paths or datasets) over one association, then release it (or abort it after
    ``abort_after`` instances, to play a sender that dies mid-series). Raises :class:`AssociationFailed`.

    A response lost on the way (pynetdicom's requestor can, rarely, let its own reactor thread take a response meant
    for ``send_c_store``: the store then times out and the association is aborted) is handled like a PACS would:
    associate again and re-send that instance (the SCP keeps one copy per SOP Instance UID), at most
    ``max_reassociations`` times. ``tls``: a client SSL context for a TLS association (the server name is ``host``).
    """
    loaded = [_load(item) for item in items]
    keys = sorted({_context_key(item) for item in loaded})
    contexts = [build_context(UID(sop_class), [UID(syntax)]) for sop_class, syntax in keys]  # accepted exactly
    if len(contexts) > 127:
        raise ValueError("too many distinct SOP class / transfer syntax pairs for one association")
    ae = AE(ae_title=calling_ae)
    ae.dimse_timeout = response_timeout_s

    def associate():  # type: ignore[no-untyped-def]
        assoc = ae.associate(
            host, port, contexts=contexts, ae_title=called_ae, evt_handlers=[(evt.EVT_CONN_OPEN, disable_nagle)],
            tls_args=(tls, host) if tls is not None else None,
        )
        if not assoc.is_established:
            raise AssociationFailed(f"association to {called_ae}@{host}:{port} was rejected or failed")
        return assoc

    assoc = associate()
    statuses: list[int] = []
    reassociations = 0
    try:
        while len(statuses) < len(loaded) and (abort_after is None or len(statuses) < abort_after):
            response = assoc.send_c_store(loaded[len(statuses)])
            if "Status" in response:
                statuses.append(int(response.Status))
                continue
            if reassociations >= max_reassociations:
                raise AssociationFailed(f"no response from {called_ae}@{host}:{port} after {reassociations} retries")
            reassociations += 1
            log.warning("no C-STORE response within %.0f s; associating again", response_timeout_s)
            if assoc.is_established:
                assoc.abort()
            assoc = associate()
    finally:
        if abort_after is not None:
            assoc.abort()
        elif assoc.is_established:
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

