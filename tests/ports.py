"""Free TCP ports for the servers tests start (Serve HTTP, Ray's GCS and agents, torch's rendezvous)."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free a moment ago: all bound at once so none is handed out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One port that was free a moment ago."""
    return free_ports(1)[0]
