"""`HOST:PORT` settings of the in-pod servers, read without loading the servers (api.py pulls
http.server, which restore-init never needs: issue 17)."""

from __future__ import annotations

import ipaddress

from . import contract
from .errors import InputError


def parse_addr(value: str, what: str, loopback_only: bool) -> tuple[str, int]:
    """`HOST:PORT` → (host, port); the SDK API must be on loopback (SPEC: 127.0.0.1 only)."""
    host, sep, port = value.rpartition(":")
    try:
        number = int(port)
        if not sep or not 0 < number < 65536:
            raise ValueError
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise InputError(f"{what} {value!r} is not IP:PORT; expected e.g. {contract.DEFAULT_API}") from None
    if loopback_only and not ip.is_loopback:
        raise InputError(f"{what} {value!r} is not a loopback address; the SDK API listens on 127.0.0.1 only")
    return host, number
