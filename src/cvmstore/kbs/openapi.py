"""The OpenAPI 3.0.3 document of the KBS's HTTP API, served at GET /kbs/v0/openapi.json.

It is data: every route of `cvmstore.kbs.app` with its parameters, bodies, and every status
the code can answer, each refusal as an RFC 7807 problem whose `title` is one of the kinds
listed for that status. docs/kbs-api.md is the prose; tests/kbs/test_openapi_document.py
keeps the paths and methods equal to the app's routes, and tests/kbs/test_openapi_fuzz.py
checks the server's answers against this document with schemathesis.
"""

from __future__ import annotations

import copy
from typing import Any

from cvmstore.kbs.config import PROTOCOL_VERSION
from cvmstore.kbs.problems import PROBLEM_CONTENT_TYPE, PROBLEM_TYPE_PREFIX
from cvmstore.kbs.protocol import RESOURCE_PART, VOLUME_NAME
from cvmstore.kbs.service import TRUSTEE_TEES

__all__ = ["openapi_document"]

Json = dict[str, Any]

# Patterns (ECMA-262, anchored) of the values the service checks (cvmstore.kbs.service).
_PART = f"^{RESOURCE_PART.pattern}$"
_VOLUME = f"^{VOLUME_NAME.pattern}$"
_B64URL = "^[A-Za-z0-9_-]*$"
_JWS = "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+$"
_THUMBPRINT = "^[A-Za-z0-9_-]{43}$"
_HEX96 = "^[0-9a-fA-F]{96}$"
_HEX96_LOWER = "^[0-9a-f]{96}$"

_EXAMPLE_NONCE = "bm9uY2Ugb2YgdGhlIGd1ZXN0IGZvciB0aGlzIHJlYWQ"  # 32 bytes
_EXAMPLE_MEASUREMENT = "ab" * 48
_EXAMPLE_POLICY = f'tees = ["snp"]\nmeasurements = ["{_EXAMPLE_MEASUREMENT}"]\n'

#: An attestation of the `sample` TEE whose report_data binds its nonce and key (trustee
#: binding), so the example is consistent; a real guest sends SNP evidence instead.
_EXAMPLE_CHALLENGE = "JrwafR8Y9cvXi+aCm/XtHE8r5psffoYy760uwu29KPM="
_EXAMPLE_ATTESTATION = {
    "init-data": None,
    "runtime-data": {
        "nonce": _EXAMPLE_CHALLENGE,
        "tee-pubkey": {
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": "QHwKmSLbPaZKSsyDdJTcCFWGRUlzrfEEbg6VvO-56G4",
            "y": "FLiU9xqWXV2aeSshTF565yZxZf-1q22zAp1eKdsULLU",
        },
    },
    "tee-evidence": {
        "primary_evidence": {
            "svn": 1,
            "report_data": "+QIoqjO6Wa0AqY0BPmnUe/Vy/LSGjqNw5qCm05yTL1C8fbg/uHMOdsHpLtVcWu1X",
        },
        "additional_evidence": "",
    },
}

_TEES = list(TRUSTEE_TEES)


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: Json, example: object = None) -> Json:
    media: Json = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


def _hex(low: int, high: int, description: str) -> Json:
    """Lowercase hex of `low` to `high` bytes."""
    return {
        "type": "string",
        "pattern": f"^(?:[0-9a-f]{{2}}){{{low},{high}}}$",
        "description": description,
    }


def _hexes(digits: int | tuple[int, int], description: str) -> Json:
    """A policy allow-list of hex strings (either case), or null for "any"."""
    sizes = [digits] if isinstance(digits, int) else list(digits)
    alternatives = "|".join(f"[0-9a-fA-F]{{{n}}}" for n in sizes)
    return {
        "type": "array",
        "nullable": True,
        "minItems": 1,
        "items": {"type": "string", "pattern": f"^(?:{alternatives})$"},
        "description": description,
    }


def _problem(status: int, kinds: dict[str, str], *, answer: bool = False) -> Json:
    """A response: a problem document of `status` whose title is one of `kinds` (kind: when)."""
    lines = "\n".join(f"- `{kind}`: {when}" for kind, when in kinds.items())
    narrowed: Json = {
        "properties": {
            "title": {"type": "string", "enum": list(kinds)},
            "status": {"type": "integer", "enum": [status]},
        }
    }
    if answer:
        narrowed["required"] = ["answer"]
    response: Json = {
        "description": f"Refused ({status}):\n{lines}",
        "content": {PROBLEM_CONTENT_TYPE: {"schema": {"allOf": [_ref("Problem"), narrowed]}}},
    }
    if status == 429:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait: always 1.",
                "required": True,
                "schema": {"type": "string", "enum": ["1"]},
            }
        }
    return response


def _responses(ok: dict[str, Json], refusals: dict[int, dict[str, str]]) -> Json:
    """The success responses, the refusals, and the 500/503 every endpoint can answer."""
    responses = dict(ok)
    for status, kinds in sorted(refusals.items()):
        responses[str(status)] = _problem(status, kinds)
    responses["500"] = _problem(500, {"InternalError": "a bug or a corrupt database; see the log"})
    unavailable = {"Timeout": "the request took longer than `request_timeout`"}
    responses["503"] = _problem(503, {**unavailable, **refusals.get(503, {})})
    return responses


_PAYLOAD_TOO_LARGE = {"PayloadTooLarge": "the body (or its Content-Length) exceeds max_body_bytes"}
_BAD_JSON = {"InvalidRequest": "the body is not JSON (or repeats a key), or a member is wrong"}
_NO_ROUTE = {"NotFound": "a path part is empty or contains `/` (no route matches)"}
_BAD_PATH = {"InvalidResourcePath": f"a part does not match {_PART}"}
_GUEST_401 = {
    "TokenInvalid": "Authorization is not `Bearer <token>`, or the attestation token does not"
    " verify, has expired, or its session is gone",
    "MissingSession": "neither a token nor the kbs-session-id cookie",
    "InvalidSession": "the cookie is malformed or names no session",
    "SessionExpired": "the session expired",
    "NotAttested": "the session has not passed /attest",
}
_ADMIN_401 = {"AdminUnauthorized": "no admin token, or not a registered one"}
_POLICY_DENY = {"PolicyDeny": "the resource's (or volume's) policy refuses this evidence"}
_VOLUME_NOT_FOUND = {"VolumeNotFound": "no such volume"}
_CHALLENGE_COOKIE = {
    "Set-Cookie": {
        "description": "`kbs-session-id=<32 hex digits>; HttpOnly; Max-Age=<seconds>; Path=/;"
        " SameSite=strict` (plus `Secure` under TLS).",
        "required": True,
        "schema": {"type": "string"},
    }
}

_SCHEMAS: Json = {
    "Problem": {
        "type": "object",
        "description": "RFC 7807 problem document; `title` is the kind, the last part of `type`.",
        "required": ["type", "title", "status", "detail"],
        "additionalProperties": False,
        "properties": {
            "type": {
                "type": "string",
                "pattern": "^" + PROBLEM_TYPE_PREFIX.replace(".", "\\.") + "[A-Za-z]+$",
            },
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "check": {
                "type": "string",
                "nullable": True,
                "description": "The failed attestation or policy check (e.g. `measurement`).",
            },
            "answer": {
                "type": "string",
                "pattern": _JWS,
                "description": "409 LedgerConflict only: the signed current ledger entry.",
            },
        },
    },
    "Request": {
        "type": "object",
        "description": "POST /auth (kbs-types Request). Other members are ignored.",
        "required": ["version", "tee"],
        "properties": {
            "version": {
                "type": "string",
                "enum": [PROTOCOL_VERSION],
                "description": "Compared exactly; any other string is 401 ProtocolVersion.",
            },
            "tee": {
                "type": "string",
                "enum": _TEES,
                "description": 'Only "snp", and "sample" when the configuration enables it, are'
                " accepted (others: 400 UnsupportedTee; unknown names: 400 UnknownTee).",
            },
            "extra-params": {"description": 'Any JSON value; ignored (aproxy sends `""`).'},
        },
    },
    "Challenge": {
        "type": "object",
        "required": ["nonce", "extra-params"],
        "additionalProperties": False,
        "properties": {
            "nonce": {
                "type": "string",
                "pattern": "^[A-Za-z0-9+/]{43}=$",
                "description": "Standard base64 (with padding) of 32 random bytes.",
            },
            "extra-params": {"type": "string", "enum": [""]},
        },
    },
    "EcTeePublicKey": {
        "type": "object",
        "required": ["kty", "crv", "alg", "x", "y"],
        "additionalProperties": {"type": "string"},
        "description": "Members must all be strings; private members (d, ...) are refused.",
        "properties": {
            "kty": {"type": "string", "enum": ["EC"]},
            "crv": {"type": "string", "enum": ["P-256", "P-384", "P-521"]},
            "alg": {"type": "string", "enum": ["ECDH-ES+A256KW"]},
            "x": {
                "type": "string",
                "pattern": _B64URL,
                "description": "base64url, 32/48/66 bytes",
            },
            "y": {
                "type": "string",
                "pattern": _B64URL,
                "description": "base64url, 32/48/66 bytes",
            },
        },
    },
    "RsaTeePublicKey": {
        "type": "object",
        "required": ["kty", "alg", "n", "e"],
        "additionalProperties": {"type": "string"},
        "properties": {
            "kty": {"type": "string", "enum": ["RSA"]},
            "alg": {
                "type": "string",
                "enum": ["RSA-OAEP-256", "RSA1_5"],
                "description": "RSA1_5 only when the configuration sets allow_rsa1_5.",
            },
            "n": {
                "type": "string",
                "pattern": _B64URL,
                "description": "base64url, minimal, 2048 to 16384 bits",
            },
            "e": {"type": "string", "pattern": _B64URL, "description": "base64url, odd, >= 3"},
        },
    },
    "TeePublicKey": {
        "description": "RFC 7517 public JWK the resources are encrypted to.",
        "oneOf": [_ref("EcTeePublicKey"), _ref("RsaTeePublicKey")],
    },
    "RuntimeData": {
        "type": "object",
        "required": ["nonce", "tee-pubkey"],
        "properties": {
            "nonce": {
                "type": "string",
                "description": "The Challenge nonce, exactly as received.",
            },
            "tee-pubkey": _ref("TeePublicKey"),
        },
    },
    "SnpTrusteeEvidence": {
        "type": "object",
        "description": "Trustee's SNP evidence: the report in the serde form of the `sev` crate.",
        "required": ["attestation_report"],
        "additionalProperties": False,
        "properties": {
            "attestation_report": {"type": "object"},
            "cert_chain": {
                "type": "array",
                "nullable": True,
                "maxItems": 32,
                "items": {
                    "type": "object",
                    "properties": {
                        "cert_type": {"type": "string"},
                        "data": {"type": "array", "items": {"type": "integer"}},
                    },
                },
            },
        },
    },
    "SnpAproxyEvidence": {
        "type": "object",
        "description": "COCONUT aproxy's SNP evidence.",
        "required": ["snp-report"],
        "additionalProperties": False,
        "properties": {
            "snp-report": {
                "type": "string",
                "description": "Standard base64 of the 1184-byte report.",
            },
            "certs-buf": {
                "type": "string",
                "nullable": True,
                "description": "Standard base64 of a GHCB certificate table.",
            },
        },
    },
    "SampleEvidence": {
        "type": "object",
        "description": "The unsigned `sample` TEE (only when the configuration enables it).",
        "required": ["svn", "report_data"],
        "additionalProperties": False,
        "properties": {
            "svn": {},
            "report_data": {
                "type": "string",
                "description": "Standard base64 of the 48-byte trustee binding digest.",
            },
        },
    },
    "CompositeEvidence": {
        "type": "object",
        "required": ["primary_evidence"],
        "properties": {
            "primary_evidence": {
                "oneOf": [
                    _ref("SnpTrusteeEvidence"),
                    _ref("SnpAproxyEvidence"),
                    _ref("SampleEvidence"),
                ]
            },
            "additional_evidence": {
                "type": "string",
                "default": "",
                "description": "Hashed into the trustee binding as is.",
            },
        },
    },
    "Attestation": {
        "type": "object",
        "description": "POST /attest (kbs-types Attestation, protocol 0.4.0).",
        "required": ["runtime-data", "tee-evidence"],
        "properties": {
            "init-data": {
                "type": "object",
                "nullable": True,
                "enum": [None],
                "description": "Must be null or absent: init-data is refused (400).",
            },
            "runtime-data": _ref("RuntimeData"),
            "tee-evidence": _ref("CompositeEvidence"),
        },
    },
    "AttestationToken": {
        "type": "object",
        "required": ["token"],
        "additionalProperties": False,
        "properties": {
            "token": {
                "type": "string",
                "pattern": _JWS,
                "description": "EAR-style ES256 JWT; also usable as a Bearer credential.",
            },
            "cvmstore-ledger-key": {
                **_ref("Jwe"),
                "description": "The session's 32-byte ledger key, as a JWE to the TEE key:"
                " ledger advances carry an HMAC-SHA256 under it (Cvmstore-Ledger-Mac).",
            },
        },
    },
    "Jwe": {
        "type": "object",
        "description": "RFC 7516 flattened JSON; every member base64url without padding.",
        "required": ["protected", "encrypted_key", "iv", "ciphertext", "tag"],
        "additionalProperties": False,
        "properties": {
            name: {"type": "string", "pattern": _B64URL}
            for name in ("protected", "encrypted_key", "iv", "ciphertext", "tag")
        },
    },
    "LedgerState": {
        "type": "object",
        "required": ["generation", "root"],
        "additionalProperties": False,
        "properties": {
            "generation": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
            "root": _hex(16, 64, "The anchored root digest."),
        },
    },
    "LedgerAdvance": {
        "type": "object",
        "description": "A compare-and-swap of the ledger entry; other members are ignored.",
        "required": ["nonce", "new", "store-id"],
        "properties": {
            "nonce": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{22,86}$",
                "description": "Canonical base64url (no padding) of 16 to 64 fresh bytes.",
            },
            "expected": {
                "allOf": [_ref("LedgerState")],
                "nullable": True,
                "description": "The entry as the guest last saw it; null (or absent) for none.",
            },
            "new": _ref("LedgerState"),
            "store-id": _hex(1, 64, "The secure store's id."),
        },
    },
    "LedgerAnswer": {
        "type": "object",
        "required": ["answer"],
        "additionalProperties": False,
        "properties": {
            "answer": {
                "type": "string",
                "pattern": _JWS,
                "description": "ES256 JWS with claims iss, iat, volume, version, generation,"
                " root, store-id, nonce, result.",
            }
        },
    },
    "KbsPolicy": {
        "type": "object",
        "description": "docs/attestation-policy.md plus `tees` and `bindings`.",
        "additionalProperties": False,
        "properties": {
            "tees": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": ["snp", "sample"]},
            },
            "bindings": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": ["trustee", "svsm"]},
            },
            "schema": {"type": "integer", "enum": [1]},
            "measurements": _hexes(96, "Launch measurements (SHA-384)."),
            "tcb": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "which": {
                        "oneOf": [
                            {"$ref": "#/components/schemas/TcbName"},
                            {"type": "array", "minItems": 1, "items": _ref("TcbName")},
                        ]
                    },
                    **{
                        component: {"type": "integer", "minimum": 0, "maximum": 255}
                        for component in ("bootloader", "tee", "snp", "microcode", "fmc")
                    },
                },
            },
            "allow_debug": {"type": "boolean"},
            "allow_migration_agent": {"type": "boolean"},
            "allow_smt": {"type": "boolean"},
            "vmpl": {
                "oneOf": [
                    {"type": "integer", "minimum": 0, "maximum": 3},
                    {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "integer", "minimum": 0, "maximum": 3},
                    },
                ]
            },
            "min_guest_svn": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1},
            "min_abi": {"type": "string", "pattern": "^[0-9]{1,3}\\.[0-9]{1,3}$"},
            "family_ids": _hexes(32, "FAMILY_IDs (needs id_key_digests or author_key_digests)."),
            "image_ids": _hexes(32, "IMAGE_IDs (needs id_key_digests or author_key_digests)."),
            "host_data": _hexes(64, "HOST_DATA values."),
            "id_key_digests": _hexes(96, "ID key digests (not all zero)."),
            "author_key_digests": _hexes(96, "Author key digests (not all zero)."),
            "chip_ids": _hexes((128, 16), "CHIP_IDs, 64 bytes or 8 (Turin)."),
            "signing_keys": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "enum": ["vcek", "vlek"]},
            },
            "products": {
                "type": "array",
                "nullable": True,
                "minItems": 1,
                "items": {"type": "string", "description": "Milan, Genoa or Turin, any case."},
            },
            "report_data": {
                "type": "string",
                "nullable": True,
                "pattern": "^[0-9a-fA-F]{128}$",
            },
        },
    },
    "TcbName": {"type": "string", "enum": ["reported", "committed", "launch", "current"]},
    "KbsPolicyDocument": {
        "description": "A stored policy as the KBS returns it: every key, null for any value.",
        "allOf": [
            _ref("KbsPolicy"),
            {
                "required": [
                    "tees",
                    "bindings",
                    "schema",
                    "measurements",
                    "tcb",
                    "allow_debug",
                    "allow_migration_agent",
                    "allow_smt",
                    "vmpl",
                    "min_guest_svn",
                    "min_abi",
                    "family_ids",
                    "image_ids",
                    "host_data",
                    "id_key_digests",
                    "author_key_digests",
                    "chip_ids",
                    "signing_keys",
                    "products",
                    "report_data",
                ]
            },
        ],
    },
    "Policies": {
        "type": "object",
        "required": ["attestation-policy", "default", "references"],
        "additionalProperties": False,
        "properties": {
            "attestation-policy": _ref("KbsPolicyDocument"),
            "default": {
                "type": "boolean",
                "description": "True while no attestation policy was set.",
            },
            "references": {
                "type": "array",
                "items": {"type": "string", "pattern": _HEX96_LOWER},
            },
        },
    },
    "ResourcePolicy": {
        "type": "object",
        "required": ["resource", "policy"],
        "additionalProperties": False,
        "properties": {"resource": {"type": "string"}, "policy": _ref("KbsPolicyDocument")},
    },
    "Reference": {
        "type": "object",
        "required": ["measurement"],
        "properties": {"measurement": {"type": "string", "pattern": _HEX96}},
    },
    "NewVolume": {
        "type": "object",
        "required": ["name", "policy"],
        "properties": {
            "name": {"type": "string", "pattern": _VOLUME},
            "policy": {"type": "string", "description": "The volume's policy, TOML or JSON text."},
        },
    },
    "Volume": {
        "type": "object",
        "required": [
            "name",
            "resource",
            "created",
            "version",
            "generation",
            "root",
            "store-id",
            "policy",
            "audit",
        ],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string"},
            "resource": {"type": "string", "description": "cvmstore/volume/<name>"},
            "created": {"type": "number", "description": "UNIX time"},
            "version": {"type": "integer", "minimum": 0},
            "generation": {"type": "integer", "nullable": True},
            "root": {"type": "string", "nullable": True, "pattern": "^[0-9a-f]*$"},
            "store-id": {"type": "string", "nullable": True, "pattern": "^[0-9a-f]*$"},
            "policy": _ref("KbsPolicyDocument"),
            "audit": {"type": "array", "items": _ref("AuditEntry")},
        },
    },
    "AuditEntry": {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "at",
            "outcome",
            "evidence-sha384",
            "from-version",
            "to-version",
            "from-generation",
            "to-generation",
        ],
        "properties": {
            "at": {"type": "number"},
            "outcome": {"type": "string", "enum": ["advanced", "conflict"]},
            "evidence-sha384": {"type": "string"},
            "from-version": {"type": "integer"},
            "to-version": {"type": "integer"},
            "from-generation": {"type": "integer", "nullable": True},
            "to-generation": {"type": "integer", "nullable": True},
        },
    },
    "StringList": {"type": "array", "items": {"type": "string"}},
    "Added": {
        "type": "object",
        "required": ["added"],
        "additionalProperties": False,
        "properties": {"added": {"type": "boolean"}},
    },
    "TokenKey": {
        "type": "object",
        "required": ["jwk", "thumbprint"],
        "additionalProperties": False,
        "properties": {
            "jwk": {
                "type": "object",
                "required": ["kty", "crv", "x", "y", "alg", "use"],
                "additionalProperties": False,
                "properties": {
                    "kty": {"type": "string", "enum": ["EC"]},
                    "crv": {"type": "string", "enum": ["P-256"]},
                    "x": {"type": "string", "pattern": _B64URL},
                    "y": {"type": "string", "pattern": _B64URL},
                    "alg": {"type": "string", "enum": ["ES256"]},
                    "use": {"type": "string", "enum": ["sig"]},
                },
            },
            "thumbprint": {
                "type": "string",
                "pattern": _THUMBPRINT,
                "description": "RFC 7638 SHA-256 thumbprint of {crv, kty, x, y}, base64url.",
            },
        },
    },
}

_SECURITY_SCHEMES: Json = {
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "kbs-session-id",
        "description": "The RCAR session (32 hex digits) set by /auth and /attest.",
    },
    "attestationToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The token /attest returned; it stands for its session until it expires.",
    },
    "adminToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin token (only its SHA-256 is stored by the KBS).",
    },
}

_GUEST: list[Json] = [{"sessionCookie": []}, {"attestationToken": []}]
_ADMIN: list[Json] = [{"adminToken": []}]


def _path_parts() -> list[Json]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "description": f"The resource {name}.",
            "schema": {"type": "string", "pattern": _PART},
            "example": example,
        }
        # The examples make aproxy's fixed path, default/sample/test.
        for name, example in (("repository", "default"), ("type", "sample"), ("tag", "test"))
    ]


def _volume_parameter(name: str) -> Json:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": _VOLUME},
        "example": "vtpm",
    }


_NO_CONTENT = {"204": {"description": "Done."}}

_PATHS: Json = {
    "/kbs/v0/auth": {
        "post": {
            "operationId": "auth",
            "tags": ["rcar"],
            "security": [],
            "summary": "Start an RCAR session: get a nonce and the kbs-session-id cookie.",
            "requestBody": {
                "required": True,
                "content": _json(
                    _ref("Request"), {"version": PROTOCOL_VERSION, "tee": "snp", "extra-params": ""}
                ),
            },
            "responses": _responses(
                {
                    "200": {
                        "description": "The challenge; the session lives session_lifetime seconds.",
                        "headers": _CHALLENGE_COOKIE,
                        "content": _json(_ref("Challenge")),
                    }
                },
                {
                    400: {
                        **_BAD_JSON,
                        "UnknownTee": "`tee` is not a kbs-types TEE name",
                        "UnsupportedTee": "a known TEE this KBS does not accept",
                    },
                    401: {"ProtocolVersion": f"`version` is not {PROTOCOL_VERSION}"},
                    413: _PAYLOAD_TOO_LARGE,
                    429: {"TooManyRequests": "the per-address rate limit of /auth"},
                },
            ),
        }
    },
    "/kbs/v0/attest": {
        "post": {
            "operationId": "attest",
            "tags": ["rcar"],
            "summary": "Present evidence bound to the nonce and a TEE key; get a token.",
            "security": [{"sessionCookie": []}],
            "requestBody": {
                "required": True,
                "content": _json(_ref("Attestation"), _EXAMPLE_ATTESTATION),
            },
            "responses": _responses(
                {
                    "200": {
                        "description": "Attested; the cookie now lives token_lifetime seconds.",
                        "headers": _CHALLENGE_COOKIE,
                        "content": _json(_ref("AttestationToken")),
                    }
                },
                {
                    400: {
                        **_BAD_JSON,
                        "InvalidTeePublicKey": "runtime-data.tee-pubkey is not an accepted JWK",
                        "InvalidEvidence": "primary_evidence is malformed",
                        "UnsupportedTee": "the session's TEE is `sample` and it is disabled",
                    },
                    401: {
                        "MissingSession": "no kbs-session-id cookie",
                        "InvalidSession": "the cookie is malformed or names no session",
                        "SessionExpired": "the session expired",
                        "NonceReused": "the session is already attested",
                        "NonceMismatch": "runtime-data.nonce is not the session's nonce",
                        "AttestationFailed": "the evidence does not verify, does not bind the"
                        " nonce and key, or fails the attestation policy (see `check`)",
                    },
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        }
    },
    "/kbs/v0/resource/{repository}/{type}/{tag}": {
        "get": {
            "operationId": "getResource",
            "tags": ["rcar"],
            "summary": "A resource, encrypted to the session's TEE key.",
            "security": _GUEST,
            "parameters": _path_parts(),
            "responses": _responses(
                {
                    "200": {
                        "description": "The secret as a flattened JWE to the TEE key.",
                        "headers": {
                            "Cvmstore-Signature": {
                                "description": "ES256 JWS by the KBS key: claims iss, iat,"
                                " resource (the path) and jwe-sha256 (base64url SHA-256 of the"
                                ' five JWE members joined by "\\n").',
                                "required": True,
                                "schema": {"type": "string", "pattern": _JWS},
                            }
                        },
                        "content": _json(_ref("Jwe")),
                    }
                },
                {
                    400: {
                        **_BAD_PATH,
                        "InvalidRequest": "a volume's tag (cvmstore/volume/<tag>) is not a"
                        " volume name",
                        "InvalidTeePublicKey": "the session's key cannot be encrypted to",
                    },
                    401: _GUEST_401,
                    403: {
                        **_POLICY_DENY,
                    },
                    404: {
                        "ResourceNotFound": "no resource at the path",
                        **_VOLUME_NOT_FOUND,
                        **_NO_ROUTE,
                    },
                },
            ),
        }
    },
    "/kbs/v0/cvmstore/ledger/{volume}": {
        "parameters": [_volume_parameter("volume")],
        "get": {
            "operationId": "readLedger",
            "tags": ["ledger"],
            "summary": "The volume's ledger entry, signed and bound to the guest's nonce.",
            "security": _GUEST,
            "parameters": [
                {
                    "name": "nonce",
                    "in": "query",
                    "required": True,
                    "description": "Canonical base64url (no padding) of 16 to 64 fresh bytes.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{22,86}$"},
                    "example": _EXAMPLE_NONCE,
                }
            ],
            "responses": _responses(
                {
                    "200": {
                        "description": "result `current`.",
                        "content": _json(_ref("LedgerAnswer")),
                    }
                },
                {
                    400: {"InvalidRequest": "a bad volume name, or a missing or bad nonce"},
                    401: _GUEST_401,
                    403: _POLICY_DENY,
                    404: {**_VOLUME_NOT_FOUND, **_NO_ROUTE},
                },
            ),
        },
        "post": {
            "operationId": "advanceLedger",
            "tags": ["ledger"],
            "summary": "Compare-and-swap the volume's ledger entry.",
            "security": _GUEST,
            "parameters": [
                {
                    "name": "Cvmstore-Ledger-Mac",
                    "in": "header",
                    "required": True,
                    "description": "base64url HMAC-SHA256, under the session's ledger key, of"
                    " 'POST ' + the path + a newline + the body as sent.",
                    "schema": {"type": "string", "pattern": _B64URL},
                }
            ],
            "requestBody": {
                "required": True,
                "content": _json(
                    _ref("LedgerAdvance"),
                    {
                        "nonce": _EXAMPLE_NONCE,
                        "expected": None,
                        "new": {"generation": 1, "root": "5a" * 32},
                        "store-id": "c0" * 16,
                    },
                ),
            },
            "responses": {
                **_responses(
                    {
                        "200": {
                            "description": "result `advanced`.",
                            "content": _json(_ref("LedgerAnswer")),
                        }
                    },
                    {
                        400: {
                            **_BAD_JSON,
                            "InvalidRequest": "bad JSON, a bad member, a bad volume name, or"
                            " new.generation not above expected.generation",
                        },
                        401: {
                            **_GUEST_401,
                            "LedgerMacInvalid": "no Cvmstore-Ledger-Mac, or one that does not"
                            " verify under the session's ledger key",
                        },
                        403: _POLICY_DENY,
                        404: {**_VOLUME_NOT_FOUND, **_NO_ROUTE},
                        413: _PAYLOAD_TOO_LARGE,
                    },
                ),
                "409": _problem(
                    409,
                    {
                        "LedgerConflict": "the entry is not `expected` (a fork); `answer` is the"
                        " signed current entry (result `conflict`)"
                    },
                    answer=True,
                ),
            },
        },
    },
    "/kbs/v0/openapi.json": {
        "get": {
            "operationId": "openapi",
            "tags": ["operations"],
            "summary": "This document.",
            "security": [],
            "responses": _responses(
                {"200": {"description": "OpenAPI 3.0.3.", "content": _json({"type": "object"})}}, {}
            ),
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "tags": ["operations"],
            "summary": "Ready when the database answers.",
            "security": [],
            "responses": _responses(
                {
                    "200": {
                        "description": "Ready.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["status", "backend"],
                                "additionalProperties": False,
                                "properties": {
                                    "status": {"type": "string", "enum": ["ok"]},
                                    "backend": {"type": "string", "enum": ["sqlite", "postgresql"]},
                                },
                            }
                        ),
                    }
                },
                {503: {"Unavailable": "the database does not answer"}},
            ),
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "tags": ["operations"],
            "summary": "Prometheus metrics of this process.",
            "security": [],
            "responses": _responses(
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                {},
            ),
        }
    },
    "/admin/v0/resource/{repository}/{type}/{tag}": {
        "parameters": _path_parts(),
        "put": {
            "operationId": "setResource",
            "tags": ["admin"],
            "summary": "Create or replace a resource; the body is the secret, byte for byte.",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary", "minLength": 1},
                        "example": "a secret",
                    }
                },
            },
            "responses": _responses(
                _NO_CONTENT,
                {
                    400: {**_BAD_PATH, "InvalidRequest": "an empty body"},
                    401: _ADMIN_401,
                    404: _NO_ROUTE,
                    409: {"Conflict": "cvmstore/volume/*: volume secrets come from volume create"},
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        },
        "delete": {
            "operationId": "deleteResource",
            "tags": ["admin"],
            "summary": "Delete a resource and its resource policy.",
            "security": _ADMIN,
            "responses": _responses(
                _NO_CONTENT,
                {
                    400: _BAD_PATH,
                    401: _ADMIN_401,
                    404: {"ResourceNotFound": "no resource at the path", **_NO_ROUTE},
                    409: {"Conflict": "cvmstore/volume/*: the secret goes with its volume"},
                },
            ),
        },
    },
    "/admin/v0/resources": {
        "get": {
            "operationId": "listResources",
            "tags": ["admin"],
            "summary": "Every resource path, sorted (volume secrets included).",
            "security": _ADMIN,
            "responses": _responses(
                {
                    "200": {
                        "description": "The paths.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["resources"],
                                "additionalProperties": False,
                                "properties": {"resources": _ref("StringList")},
                            }
                        ),
                    }
                },
                {401: _ADMIN_401},
            ),
        }
    },
    "/admin/v0/policy": {
        "get": {
            "operationId": "getPolicy",
            "tags": ["admin"],
            "summary": "The attestation policy and the reference measurements.",
            "security": _ADMIN,
            "responses": _responses(
                {"200": {"description": "The policies.", "content": _json(_ref("Policies"))}},
                {401: _ADMIN_401},
            ),
        },
        "put": {
            "operationId": "setPolicy",
            "tags": ["admin"],
            "summary": "Replace the attestation policy (checked at /attest).",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "description": "TOML or JSON text, UTF-8 (the Content-Type is not looked at).",
                "content": {
                    "text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE_POLICY},
                    "application/json": {"schema": _ref("KbsPolicy")},
                },
            },
            "responses": _responses(
                {"200": {"description": "The policies now.", "content": _json(_ref("Policies"))}},
                {
                    400: {"InvalidPolicy": "not TOML or JSON, or a key the schema refuses"},
                    401: _ADMIN_401,
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        },
    },
    "/admin/v0/resource-policy/{repository}/{type}/{tag}": {
        "parameters": _path_parts(),
        "put": {
            "operationId": "setResourcePolicy",
            "tags": ["admin"],
            "summary": "Which evidence may read the resource (for cvmstore/volume/<name>:"
            " the volume's policy, which also governs its ledger).",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "description": "TOML or JSON text, UTF-8 (the Content-Type is not looked at).",
                "content": {
                    "text/plain": {"schema": {"type": "string"}, "example": _EXAMPLE_POLICY},
                    "application/json": {"schema": _ref("KbsPolicy")},
                },
            },
            "responses": _responses(
                {"200": {"description": "Stored.", "content": _json(_ref("ResourcePolicy"))}},
                {
                    400: {
                        **_BAD_PATH,
                        "InvalidPolicy": "not TOML or JSON, or a key the schema refuses",
                    },
                    401: _ADMIN_401,
                    404: {"VolumeNotFound": "cvmstore/volume/<name>: no such volume", **_NO_ROUTE},
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        },
        "delete": {
            "operationId": "deleteResourcePolicy",
            "tags": ["admin"],
            "summary": "Drop a resource policy (the attestation policy applies again).",
            "security": _ADMIN,
            "responses": _responses(
                _NO_CONTENT,
                {
                    400: _BAD_PATH,
                    401: _ADMIN_401,
                    404: {
                        "NotFound": "no policy for the path (volume policies cannot be dropped),"
                        " or no route matches"
                    },
                },
            ),
        },
    },
    "/admin/v0/references": {
        "get": {
            "operationId": "listReferences",
            "tags": ["admin"],
            "summary": "The same document as GET /admin/v0/policy.",
            "security": _ADMIN,
            "responses": _responses(
                {"200": {"description": "The policies.", "content": _json(_ref("Policies"))}},
                {401: _ADMIN_401},
            ),
        },
        "post": {
            "operationId": "addReference",
            "tags": ["admin"],
            "summary": "Register a reference launch measurement (SHA-384).",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "content": _json(_ref("Reference"), {"measurement": _EXAMPLE_MEASUREMENT}),
            },
            "responses": _responses(
                {
                    "200": {
                        "description": "Already registered: added is false.",
                        "content": _json(_ref("Added")),
                    },
                    "201": {
                        "description": "Registered: added is true.",
                        "content": _json(_ref("Added")),
                    },
                },
                {
                    400: {"InvalidRequest": "bad JSON, or not 96 hex digits"},
                    401: _ADMIN_401,
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        },
    },
    "/admin/v0/references/{measurement}": {
        "delete": {
            "operationId": "deleteReference",
            "tags": ["admin"],
            "summary": "Withdraw a reference measurement (compared in lowercase).",
            "security": _ADMIN,
            "parameters": [
                {
                    "name": "measurement",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": _HEX96},
                    "example": _EXAMPLE_MEASUREMENT,
                }
            ],
            "responses": _responses(
                _NO_CONTENT,
                {
                    401: _ADMIN_401,
                    404: {"NotFound": "not registered (any other string too), or no route"},
                },
            ),
        }
    },
    "/admin/v0/volumes": {
        "get": {
            "operationId": "listVolumes",
            "tags": ["admin"],
            "summary": "Every volume name, sorted.",
            "security": _ADMIN,
            "responses": _responses(
                {
                    "200": {
                        "description": "The names.",
                        "content": _json(
                            {
                                "type": "object",
                                "required": ["volumes"],
                                "additionalProperties": False,
                                "properties": {"volumes": _ref("StringList")},
                            }
                        ),
                    }
                },
                {401: _ADMIN_401},
            ),
        },
        "post": {
            "operationId": "createVolume",
            "tags": ["admin"],
            "summary": "Make a volume: a random 32-byte root secret, its policy, ledger version 0.",
            "security": _ADMIN,
            "requestBody": {
                "required": True,
                "content": _json(_ref("NewVolume"), {"name": "vtpm", "policy": _EXAMPLE_POLICY}),
            },
            "responses": _responses(
                {"201": {"description": "Made.", "content": _json(_ref("Volume"))}},
                {
                    400: {
                        "InvalidRequest": "bad JSON, a bad name, or a policy that is not a string",
                        "InvalidPolicy": "the policy text is not a valid policy",
                    },
                    401: _ADMIN_401,
                    409: {"Conflict": "the volume exists"},
                    413: _PAYLOAD_TOO_LARGE,
                },
            ),
        },
    },
    "/admin/v0/volumes/{name}": {
        "get": {
            "operationId": "getVolume",
            "tags": ["admin"],
            "summary": "A volume's ledger entry and its newest 100 audit entries, newest first.",
            "security": _ADMIN,
            "parameters": [_volume_parameter("name")],
            "responses": _responses(
                {"200": {"description": "The volume.", "content": _json(_ref("Volume"))}},
                {401: _ADMIN_401, 404: {**_VOLUME_NOT_FOUND, **_NO_ROUTE}},
            ),
        }
    },
    "/admin/v0/token-key": {
        "get": {
            "operationId": "getTokenKey",
            "tags": ["admin"],
            "summary": "The KBS's signing key, and the thumbprint guests pin.",
            "security": _ADMIN,
            "responses": _responses(
                {"200": {"description": "The key.", "content": _json(_ref("TokenKey"))}},
                {401: _ADMIN_401},
            ),
        }
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 description of every endpoint (a fresh copy each call)."""
    return copy.deepcopy(
        {
            "openapi": "3.0.3",
            "info": {
                "title": "cvmstore KBS",
                "version": PROTOCOL_VERSION,
                "description": "Trustee KBS protocol 0.4.0 (RCAR), the cvmstore rollback"
                " ledger and the admin API. See docs/kbs-api.md.",
            },
            "tags": [
                {"name": "rcar", "description": "Trustee's request-challenge-attestation-response"},
                {"name": "ledger", "description": "The cvmstore plugin: the rollback ledger"},
                {"name": "admin", "description": "Administration (admin token)"},
                {"name": "operations", "description": "Health, metrics, this document"},
            ],
            "paths": _PATHS,
            "components": {"schemas": _SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
        }
    )
