"""`AdminClient`: the KBS admin API (`/admin/v0`) from Python; `cvmstore kbs admin` wraps it.

Every call carries the admin token as a Bearer credential. Refusals raise the matching
`KbsError` with the KBS's problem detail; nothing here ever prints the token.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from cvmstore.errors import (
    KbsAuthError,
    KbsError,
    KbsProtocolError,
    KbsUnreachableError,
    ResourceNotFoundError,
)
from cvmstore.kbs.client import tls_verify

__all__ = ["AdminClient"]


class AdminClient:
    """One administrator's connection to a KBS."""

    def __init__(
        self,
        url: str,
        token: str,
        *,
        verify: bool | str = True,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            verify=tls_verify(verify),
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {token}"},
        )

    def __repr__(self) -> str:
        return f"AdminClient({self.url!r}, <token hidden>)"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_resource(self, path: str, value: bytes) -> None:
        """Create or replace the resource at "repository/type/tag"."""
        self._call("PUT", f"/admin/v0/resource/{_path(path)}", content=value)

    def delete_resource(self, path: str) -> None:
        """Delete a resource."""
        self._call("DELETE", f"/admin/v0/resource/{_path(path)}")

    def list_resources(self) -> list[str]:
        """Every resource path."""
        return list(self._call("GET", "/admin/v0/resources")["resources"])

    def set_policy(self, document: bytes) -> dict[str, Any]:
        """Replace the attestation policy (TOML or JSON text)."""
        return self._call("PUT", "/admin/v0/policy", content=document)

    def policy(self) -> dict[str, Any]:
        """The attestation policy and the reference measurements."""
        return self._call("GET", "/admin/v0/policy")

    def set_resource_policy(self, path: str, document: bytes) -> dict[str, Any]:
        """Set which evidence may read the resource at `path`."""
        return self._call("PUT", f"/admin/v0/resource-policy/{_path(path)}", content=document)

    def add_reference(self, measurement: str) -> bool:
        """Register a reference launch measurement (96 hex digits); False if known already."""
        return bool(
            self._call("POST", "/admin/v0/references", json={"measurement": measurement})["added"]
        )

    def delete_reference(self, measurement: str) -> None:
        """Withdraw a reference measurement."""
        self._call("DELETE", f"/admin/v0/references/{_segment(measurement)}")

    def create_volume(self, name: str, policy: str) -> dict[str, Any]:
        """Make a volume (root secret, policy, ledger entry at version 0)."""
        return self._call("POST", "/admin/v0/volumes", json={"name": name, "policy": policy})

    def volume(self, name: str) -> dict[str, Any]:
        """A volume's ledger entry and audit log."""
        return self._call("GET", f"/admin/v0/volumes/{_segment(name)}")

    def volumes(self) -> list[str]:
        """Every volume name."""
        return list(self._call("GET", "/admin/v0/volumes")["volumes"])

    def token_key(self) -> dict[str, Any]:
        """The KBS's signing key: {"jwk", "thumbprint"}; guests pin the thumbprint."""
        return self._call("GET", "/admin/v0/token-key")

    def _call(
        self, method: str, path: str, *, content: bytes | None = None, json: object = None
    ) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, content=content, json=json)
        except httpx.TransportError as exc:
            raise KbsUnreachableError(
                f"the KBS at {self.url} cannot be reached: {type(exc).__name__}"
            ) from None
        if response.status_code == 204:
            return {}
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success:
            if not isinstance(body, dict):
                raise KbsProtocolError(f"{method} {path}: the KBS answered with no JSON object")
            return body
        detail = body.get("detail") if isinstance(body, dict) else None
        message = (
            f"{method} {path}: HTTP {response.status_code}: {detail or response.reason_phrase}"
        )
        error: type[KbsError]
        if response.status_code in (401, 403):
            error = KbsAuthError
        elif response.status_code == 404:
            error = ResourceNotFoundError
        else:
            error = KbsError
        raise error(message)


def _segment(value: str) -> str:
    """One URL path segment, escaped: a value can never reach another endpoint."""
    return quote(value, safe="")


def _path(path: str) -> str:
    """A resource path "repository/type/tag", each part escaped on its own."""
    parts = path.split("/")
    if len(parts) != 3:
        raise ValueError(f"a resource path is repository/type/tag, not {path[:60]!r}")
    return "/".join(_segment(part) for part in parts)
