"""DICOM over TLS: with a certificate the SCP accepts TLS associations only, and with a CA it checks the caller's
certificate too. Real associations, real certificates (made here with openssl): one TLS sender gets through; a plain
sender and a TLS sender without a client certificate are refused."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from dicom_node.config import NodeConfig
from dicom_node.scp import StorageNode
from dicom_node.scu import AssociationFailed, send_instances
from fingerprint.imaging.dicom_write import noise_series


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate, both signed by the CA."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=dbp-test-ca")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=dbp-test-{name}")
        extra = ["-extfile", "server.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", *extra)
    return {name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


class Collector:
    def __init__(self) -> None:
        self.completed = []

    def __call__(self, completed) -> None:  # type: ignore[no-untyped-def]
        self.completed.append(completed)


def test_tls_associations_only_and_client_certificates_checked(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the test certificates")
    certs = make_certificates(tmp_path)
    collector = Collector()
    config = NodeConfig(spool_dir=tmp_path / "spool", port=0, quiet_time_s=0.3, tls_cert_file=certs["server.pem"],
                        tls_key_file=certs["server.key"], tls_ca_file=certs["ca.pem"])
    node = StorageNode(config, collector).start()
    try:
        client = ssl.create_default_context(cafile=str(certs["ca.pem"]))
        client.load_cert_chain(str(certs["client.pem"]), str(certs["client.key"]))
        series = noise_series(3, seed=11)
        assert send_instances(series, node.port, called_ae=config.ae_title, tls=client).all_ok
        with pytest.raises(AssociationFailed):  # plain DICOM to a TLS port
            send_instances(noise_series(2, seed=12), node.port, called_ae=config.ae_title)
        anonymous = ssl.create_default_context(cafile=str(certs["ca.pem"]))  # TLS, but no client certificate
        with pytest.raises(AssociationFailed):
            send_instances(noise_series(2, seed=13), node.port, called_ae=config.ae_title, tls=anonymous)
        deadline = time.monotonic() + 20
        while not collector.completed and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        node.stop()
    assert [c.instance_count for c in collector.completed] == [3]  # only the TLS sender's series arrived
