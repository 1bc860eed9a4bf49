"""The storage SCP: pynetdicom accepting MR instances, spooling each one durably, and tracking series completion.

Why answer success only after the spool write: the sender (a PACS or Orthanc) deletes or stops retrying what it was
told is stored. A spool that cannot store answers 0xA700 (out of resources), so the sender keeps the instance and
retries later. Nothing here decodes pixel data: instances are stored exactly as sent, in any transfer syntax we
accepted, and the accepted compressed syntaxes are those an installed decoder can read (so a sender falls back to
another syntax rather than us spooling data the worker cannot open).

Authentication: DICOM has no passwords, so access is limited by calling AE title (``allowed_calling_aes``) and by
the called AE title having to match ours. An empty list is allowed only while listening on loopback.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import threading
import uuid
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.dataelem import convert_raw_data_element
from pydicom.filereader import data_element_generator
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from .completion import CompletionTracker, OnSeriesComplete, OnSeriesReleased
from .config import NodeConfig
from .header_scan import uid_value
from .part10 import part10_parts
from .spool import Spool, SpoolWriteError, series_key_for, uid_key
from .transport import tune_receiver

log = logging.getLogger(__name__)

#: The storage SOP classes we accept: classic and Enhanced MR (multi-frame), and legacy-converted Enhanced MR.
STORAGE_SOP_CLASSES: tuple[UID, ...] = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)

UNCOMPRESSED_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

SERIES_INSTANCE_UID_TAG = 0x0020000E

# DIMSE statuses (PS3.4 B.2.3 and annex C)
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000


def decodable_compressed_syntaxes() -> tuple[UID, ...]:
    """Compressed transfer syntaxes pydicom can decode with the plugins installed here (JPEG, JPEG-LS, JPEG 2000,
    HTJ2K, RLE with pylibjpeg/GDCM/Pillow)."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import (
        HTJ2K,
        JPEG2000,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        JPEG2000Lossless,
        JPEGBaseline8Bit,
        JPEGExtended12Bit,
        JPEGLossless,
        JPEGLosslessSV1,
        JPEGLSLossless,
        JPEGLSNearLossless,
        RLELossless,
    )

    candidates = (
        JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, JPEGLSNearLossless,
        JPEG2000Lossless, JPEG2000, HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K, RLELossless,
    )  # fmt: skip
    usable = []
    for syntax in candidates:
        try:
            if get_decoder(syntax).is_available:
                usable.append(syntax)
        except NotImplementedError:
            continue
    return tuple(usable)


def accepted_transfer_syntaxes() -> list[UID]:
    return [*UNCOMPRESSED_SYNTAXES, *decodable_compressed_syntaxes()]


def parse_ae_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``"A, B"`` or ``["A", "B"]`` -> ``["A", "B"]`` (TOML may give a list, the environment a string)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and "localhost"; "" and 0.0.0.0 mean every interface."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class StorageNode:
    """The SCP as an object: ``StorageNode(config, on_series_complete).start()`` returns at once (non-blocking);
    ``.port`` is the bound port (``config.port == 0`` picks a free one); ``.stop()`` shuts down cleanly.

    ``on_series_complete`` gets a :class:`~dicom_node.types.CompletedSeries` from a background thread and must
    return quickly (enqueue, don't process). Series it raised for are handed on again later. ``on_series_released``
    (optional) is told a series' key and folder when its last association ends, before its quiet time: a hint that
    an idle worker may start on it (:data:`~dicom_node.completion.OnSeriesReleased`).
    """

    def __init__(
        self,
        config: NodeConfig,
        on_series_complete: OnSeriesComplete,
        *,
        spool: Spool | None = None,
        recover: bool = True,
        on_series_released: OnSeriesReleased | None = None,
    ) -> None:
        self.config = config
        self.spool = spool or Spool(config.spool_dir)
        self.tracker = CompletionTracker(
            self.spool,
            on_series_complete,
            config.quiet_time_s,
            open_quiet_time_s=config.open_quiet_time_s,
            keep_done_s=config.spool_keep_done_s,
            on_series_released=on_series_released,
        )
        self.recover = recover
        self.allowed_calling_aes = parse_ae_list(config.allowed_calling_aes)
        self._server = None
        self._association_ids: dict[int, str] = {}
        self._ids_lock = threading.Lock()
        self.recovered: list[str] = []

    # --- life cycle -------------------------------------------------------------------------------------------
    def build_ae(self) -> AE:
        """The pynetdicom AE with our contexts and access rules (separate so tests/benchmarks can inspect it)."""
        bind = self.config.bind_address
        allowed = self.allowed_calling_aes
        if not allowed and not is_loopback(bind):
            raise ValueError(
                f"refusing to listen on {bind} without an allow-list of calling AE titles: set allowed_calling_aes "
                "(DBP_ALLOWED_CALLING_AES), or '*' to accept any caller explicitly"
            )
        ae = AE(ae_title=self.config.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = [] if allowed == ["*"] else allowed
        ae.network_timeout = self.config.dicom_network_timeout_s
        ae.maximum_associations = 16
        syntaxes = accepted_transfer_syntaxes()
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        return ae

    def start(self) -> StorageNode:
        """Prepare the spool, hand on what a previous run left unfinished, and start listening (non-blocking)."""
        ae = self.build_ae()
        self.spool.prepare()
        if self.recover:
            self.recovered = self.tracker.recover_pending()
        self.tracker.start()
        handlers = [
            (evt.EVT_CONN_OPEN, tune_receiver),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_association_end),
            (evt.EVT_ABORTED, self._on_association_end),
            (evt.EVT_CONN_CLOSE, self._on_association_end),
        ]
        self._server = ae.start_server(
            (self.config.bind_address, int(self.config.port)), block=False, evt_handlers=handlers,
            ssl_context=self._tls_context(),
        )
        log.info(
            "storage SCP %s listening on %s:%d (quiet time %.1f s, calling AE allow-list: %s)",
            self.config.ae_title,
            self.config.bind_address,
            self.port,
            self.config.quiet_time_s,
            ", ".join(self.allowed_calling_aes) or "none (loopback only)",
        )
        return self

    def _tls_context(self) -> ssl.SSLContext | None:
        """The server side of TLS associations, when a certificate is configured (None: plain DICOM)."""
        if not self.config.tls_cert_file:
            return None
        if not self.config.tls_key_file:
            raise ValueError("TLS needs the key of the certificate too (tls_key_file)")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.config.tls_cert_file), str(self.config.tls_key_file))
        if self.config.tls_ca_file:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(str(self.config.tls_ca_file))
        return context

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the storage node is not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, let the server close, stop the completion thread. Unfinished series stay in the spool."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self.tracker.stop()
        log.info("storage SCP %s stopped", self.config.ae_title)

    def __enter__(self) -> StorageNode:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- event handlers (run in pynetdicom's association threads) -----------------------------------------------
    def _association_id(self, event: Event) -> str:
        with self._ids_lock:
            key = id(event.assoc)
            if key not in self._association_ids:
                self._association_ids[key] = uuid.uuid4().hex[:12]
            return self._association_ids[key]

    def _on_echo(self, event: Event) -> int:
        return STATUS_SUCCESS

    def _on_association_end(self, event: Event) -> None:
        with self._ids_lock:
            association_id = self._association_ids.pop(id(event.assoc), None)
        if association_id is not None:
            self.tracker.association_ended(association_id)

    def _on_store(self, event: Event) -> int | Dataset:
        association_id = self._association_id(event)
        calling_ae = event.assoc.requestor.ae_title
        sop_uid = str(event.request.AffectedSOPInstanceUID or "")
        sop_ref = uid_key(sop_uid, "sop")[:12] if sop_uid else "?"
        try:
            series_uid = series_uid_of(event)
        except Exception as exc:  # undecodable data set: keep it, tell the sender
            return self._reject(event, sop_uid, f"data set could not be parsed ({type(exc).__name__})")
        if not series_uid or not sop_uid:
            return self._reject(event, sop_uid, "no SeriesInstanceUID or SOP Instance UID")
        series_key = series_key_for(series_uid)
        try:
            self.tracker.instance_arriving(series_key, association_id, calling_ae)
            _, replaced = self.spool.store_instance(series_key, sop_uid, part10_parts(event))
            self.tracker.instance_stored(series_key)
        except SpoolWriteError as exc:
            log.error("instance %s of series %s from %s NOT stored: %s", sop_ref, series_key, calling_ae, exc)
            return _status(STATUS_OUT_OF_RESOURCES, str(exc))
        log.debug("stored instance %s of series %s%s", sop_ref, series_key, " (re-sent, replaced)" if replaced else "")
        return STATUS_SUCCESS

    def _reject(self, event: Event, sop_uid: str, reason: str) -> Dataset:
        """Unusable instance: kept under ``rejected/`` with its reason (nothing lost), and the sender is told."""
        try:
            self.spool.store_rejected(sop_uid, event.encoded_dataset(), reason)
        except SpoolWriteError as exc:
            log.error("rejected instance could not be kept either: %s", exc)
            return _status(STATUS_OUT_OF_RESOURCES, str(exc))
        log.warning("instance from %s rejected: %s", event.assoc.requestor.ae_title, reason)
        return _status(STATUS_CANNOT_UNDERSTAND, reason)


def series_uid_of(event: Event) -> str:
    """The SeriesInstanceUID of a C-STORE data set, read from the bytes as sent (no data set, pixel data or file meta
    built), as the instance is stored exactly as sent anyway and the worker's reader checks the rest. A deflated data
    set is inflated (whole) by pynetdicom first."""
    syntax = UID(event.context.transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        return str(event.dataset.get("SeriesInstanceUID", "") or "").strip()
    return series_uid_in(event.request.DataSet.getvalue(), syntax)  # type: ignore[union-attr]


def series_uid_in(raw: bytes, syntax: UID) -> str:
    """The SeriesInstanceUID of an encoded (not deflated) data set: the header walk of
    :mod:`dicom_node.header_scan` where it can, else pydicom's element generator, which walks the element headers up
    to it skipping values."""
    if syntax.is_little_endian:
        found = uid_value(raw, SERIES_INSTANCE_UID_TAG, syntax.is_implicit_VR)
        if found is not None:
            return found
    elements = data_element_generator(BytesIO(raw), syntax.is_implicit_VR, syntax.is_little_endian, defer_size=1024)
    for element in elements:
        tag = int(element.tag)  # a plain int: BaseTag's comparisons run in Python, once per element
        if tag == SERIES_INSTANCE_UID_TAG:
            return str(convert_raw_data_element(element).value or "").strip()
        if tag > SERIES_INSTANCE_UID_TAG:
            break
    return ""


def _status(code: int, comment: str) -> Dataset:
    """A C-STORE response status with an Error Comment (64 chars max, PHI-free by construction)."""
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
