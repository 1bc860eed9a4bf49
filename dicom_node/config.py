"""What the storage SCP needs to know, given explicitly (the application builds it from its settings)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class NodeConfig:
    """The SCP's identity, address, access list, spool and completion timing.

    Example::

        node = StorageNode(NodeConfig(spool_dir=Path("/srv/dbp/spool"), port=11112), on_series_complete=print)
        node.start()
    """

    spool_dir: Path
    ae_title: str = "DEEPBRAINPRINT"
    port: int = 11112  # 0 picks a free port
    bind_address: str = "127.0.0.1"
    # DICOM has no passwords: calling AE titles allowed to associate, comma-separated. Empty: any caller, but only
    # while bound to loopback (the SCP refuses to start on another address without a list); "*": any, explicitly.
    allowed_calling_aes: str = ""
    quiet_time_s: float = 5.0  # a series is complete when no instance arrived for this long after release
    open_quiet_time_s: float = 60.0  # ... or for this long while its association stays open
    dicom_network_timeout_s: float = 60.0  # a silent peer's association is aborted after this
    spool_keep_done_s: float = 7 * 86400.0  # finished series leave the spool after this long; 0 keeps them
    # TLS for associations (DICOM PS3.15 annex B, the "secure transport" profile): with a certificate and key the SCP
    # accepts TLS associations only; with a CA file too, it also requires and checks the callers' certificates.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
