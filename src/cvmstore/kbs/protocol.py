"""The wire names and byte layouts both sides of the KBS protocol share.

The server (`service`, `app`), the guest (`client`, `cvmstore.guest`) and the benchmarks take
them from here, so the two sides cannot drift apart. docs/kbs-api.md specifies each.
"""

from __future__ import annotations

import re

__all__ = [
    "LEDGER_KEY_MEMBER",
    "LEDGER_MAC_HEADER",
    "LEDGER_PATH",
    "RESOURCE_PART",
    "SESSION_COOKIE",
    "SIGNATURE_HEADER",
    "VOLUME_NAME",
    "VOLUME_PREFIX",
    "ledger_mac_input",
    "volume_resource_path",
]

#: The RCAR session cookie (Trustee's name).
SESSION_COOKIE = "kbs-session-id"
#: The response header carrying the KBS's signature over a released resource.
SIGNATURE_HEADER = "Cvmstore-Signature"
#: The request header carrying a ledger advance's HMAC under the session's ledger key.
LEDGER_MAC_HEADER = "Cvmstore-Ledger-Mac"
#: The member of /attest's answer holding the session's ledger key (a JWE to the TEE key).
LEDGER_KEY_MEMBER = "cvmstore-ledger-key"
#: The ledger plugin's path; a volume's entry is LEDGER_PATH/<volume>.
LEDGER_PATH = "/kbs/v0/cvmstore/ledger"
#: One part of a resource path (repository, type, tag): no "/", no leading . - _
RESOURCE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A volume's name (also the tag of its root secret's path).
VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Where volumes' root secrets live: VOLUME_PREFIX<volume> ("repository/type/tag").
VOLUME_PREFIX = "cvmstore/volume/"


def volume_resource_path(volume: str) -> str:
    """The resource path of a volume's root secret."""
    return VOLUME_PREFIX + volume


def ledger_mac_input(path: str, raw: bytes) -> bytes:
    """What a ledger advance's MAC covers: the method and path, a newline, then the body."""
    return b"POST " + path.encode("ascii") + b"\n" + raw
