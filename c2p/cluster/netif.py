"""Which local network interface reaches an address: what gloo needs to be told on hosts whose
names do not resolve to their cluster address.

gloo picks the address it advertises to its peers from the host name (``gethostname()``
resolved); where that fails, or resolves to 127.0.1.1 (Debian's /etc/hosts), it falls back to
loopback and every peer on another host fails to connect. ``GLOO_SOCKET_IFNAME`` overrides
that choice; :func:`interface_towards` finds the interface the kernel routes to the
rendezvous address through, which is the one the other hosts can reach this one on.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

__all__ = ["local_address_towards", "interface_of_address", "interface_towards"]

_SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's (primary) IPv4 address


def local_address_towards(addr: str, port: int = 9) -> str | None:
    """This host's source IPv4 address for packets to ``addr`` (a name or address), or None
    when ``addr`` does not resolve or is not routable. Sends nothing (a UDP ``connect`` only
    picks the route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((addr, port))
            return s.getsockname()[0]
    except OSError:
        return None


def interface_of_address(ip: str) -> str | None:
    """The name of the interface holding IPv4 address ``ip`` (``"eth0"``), or None."""
    want = ipaddress.IPv4Address(ip)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:
                ifreq = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # no IPv4 address on this interface
                continue
            if ipaddress.IPv4Address(ifreq[20:24]) == want:
                return name
    return None


def interface_towards(addr: str) -> str | None:
    """The interface this host reaches ``addr`` through; None for loopback or when unknown.

    On the host that holds ``addr`` itself the route is the local one, and the interface is
    the one that carries the address (not ``lo``), so every rank names the interface of the
    shared network.
    """
    local = local_address_towards(addr)
    if local is None or ipaddress.IPv4Address(local).is_loopback:
        return None
    return interface_of_address(local)
