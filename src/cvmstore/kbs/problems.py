"""RFC 7807 problem documents: every refusal of the KBS, with its HTTP status.

The `type` URIs follow Trustee's (`.../kbs/errors/<Kind>`), so a Trustee client recognises
them. A problem never carries a stack trace, a secret, or the offending input beyond a short,
printable excerpt.
"""

from __future__ import annotations

__all__ = ["PROBLEM_CONTENT_TYPE", "PROBLEM_TYPE_PREFIX", "Problem"]

PROBLEM_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """A refusal: HTTP status, a kind (the last part of `type`) and a one-line detail."""

    def __init__(self, status: int, kind: str, detail: str, **extra: object) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra

    def document(self) -> dict[str, object]:
        """The problem document (RFC 7807 members, then extension members)."""
        return {
            "type": PROBLEM_TYPE_PREFIX + self.kind,
            "title": self.kind,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }


def bad_request(detail: str, kind: str = "InvalidRequest") -> Problem:
    """400."""
    return Problem(400, kind, detail)


def unauthorized(detail: str, kind: str) -> Problem:
    """401."""
    return Problem(401, kind, detail)


def forbidden(detail: str) -> Problem:
    """403: a policy denied it."""
    return Problem(403, "PolicyDeny", detail)


def not_found(detail: str, kind: str = "ResourceNotFound") -> Problem:
    """404."""
    return Problem(404, kind, detail)
