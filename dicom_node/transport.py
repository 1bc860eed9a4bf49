"""TCP tuning shared by our SCP and SCU."""

from __future__ import annotations

import socket

from pynetdicom.events import Event


def disable_nagle(event: Event) -> None:
    """EVT_CONN_OPEN handler: TCP_NODELAY. pynetdicom writes a command PDU then a data PDU; with Nagle's algorithm
    the second waits for the peer's delayed ACK (40 ms on Linux), capping a small-instance association at about
    20 instances/s. DCMTK-based senders set TCP_NODELAY too."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:  # not TCP (tests with socket pairs): nothing to tune
            pass
