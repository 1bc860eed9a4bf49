"""TCP tuning for DICOM associations (EVT_CONN_OPEN handlers for our SCP and SCU).

Why: a C-STORE is a small command PDU followed by the data set PDU(s). A sender with Nagle's algorithm on (DCMTK's
storescu as shipped by Debian, hence many PACS) holds the data PDU until the command PDU is acknowledged, and a
receiver with delayed ACKs waits up to 40 ms before acknowledging: every instance then costs 40 ms, about 20
instances/s per association whatever the disk. We cannot change the sender, so the SCP acknowledges at once
(TCP_QUICKACK, which Linux clears again after a while, so it is re-armed after every read) and sends without delay
(TCP_NODELAY). Measured in bench/bench_ingest.py (``bare_stock`` against ``bare``).
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.events import Event

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _raw_socket(event: Event) -> Any:
    return getattr(getattr(event.assoc.dul, "socket", None), "socket", None)


def disable_nagle(event: Event) -> None:
    """EVT_CONN_OPEN handler for a sender (our SCU): TCP_NODELAY, so the data PDU follows its command at once."""
    sock = _raw_socket(event)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not a TCP socket: nothing to tune
            pass


def tune_receiver(event: Event) -> None:
    """EVT_CONN_OPEN handler for our SCP: TCP_NODELAY, and TCP_QUICKACK re-armed after every read, so a sender
    with Nagle's algorithm on is not held back by our delayed ACKs."""
    disable_nagle(event)
    association_socket = getattr(event.assoc.dul, "socket", None)
    sock = _raw_socket(event)
    if _QUICKACK is None or sock is None or association_socket is None:
        return
    read = association_socket.recv

    def recv_and_ack_at_once(nr_bytes: int) -> bytearray:
        data = read(nr_bytes)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
        except OSError:  # socket closing: the read already told pynetdicom
            pass
        return data

    try:
        sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
    except OSError:
        return
    association_socket.recv = recv_and_ack_at_once
