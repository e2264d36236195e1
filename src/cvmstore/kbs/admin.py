"""`AdminClient`: the KBS admin API (`/admin/v0`) from Python; `cvmstore kbs admin` wraps it.

Every call carries the admin token as a Bearer credential. Refusals raise the matching
`KbsError` with the KBS's problem detail; nothing here ever prints the token.
"""

from __future__ import annotations

from typing import Any

import httpx

from cvmstore.errors import (
    KbsAuthError,
    KbsError,
    KbsProtocolError,
    KbsUnreachableError,
    ResourceNotFoundError,
)

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
            verify=verify,
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
        self._call("PUT", f"/admin/v0/resource/{path}", content=value)

    def delete_resource(self, path: str) -> None:
        """Delete a resource."""
        self._call("DELETE", f"/admin/v0/resource/{path}")

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
        return self._call("PUT", f"/admin/v0/resource-policy/{path}", content=document)

    def add_reference(self, measurement: str) -> bool:
        """Register a reference launch measurement (96 hex digits); False if known already."""
        return bool(
            self._call("POST", "/admin/v0/references", json={"measurement": measurement})["added"]
        )

    def delete_reference(self, measurement: str) -> None:
        """Withdraw a reference measurement."""
        self._call("DELETE", f"/admin/v0/references/{measurement}")

    def create_volume(self, name: str, policy: str) -> dict[str, Any]:
        """Make a volume (root secret, policy, ledger entry at version 0)."""
        return self._call("POST", "/admin/v0/volumes", json={"name": name, "policy": policy})

    def volume(self, name: str) -> dict[str, Any]:
        """A volume's ledger entry and audit log."""
        return self._call("GET", f"/admin/v0/volumes/{name}")

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
            body = {}
        if response.is_success and isinstance(body, dict):
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
        elif response.is_success:
            error = KbsProtocolError
        else:
            error = KbsError
        raise error(message)
