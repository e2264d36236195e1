"""KBS policy documents: which evidence may attest, and which may read a resource or a ledger.

A KBS policy is the declarative SEV-SNP attestation policy of `cvmstore.attest.policy` (every
key of docs/attestation-policy.md) plus two keys of the KBS's own:

    tees       list of "snp", "sample" (["snp"])   the TEE kinds accepted; "sample" (unsigned
                                                   test evidence) counts only when the KBS
                                                   configuration also allows it
    bindings   list of "trustee", "svsm"           how REPORT_DATA may bind the guest's key
               (["trustee"])                       and the nonce (`cvmstore.kbs.binding`)

The same document is used in three places: the attestation policy (checked at /attest), a
resource policy (checked when that resource is read) and a volume's policy (key and ledger).
A policy without `measurements` takes the registered reference measurements
(`add-reference`); when there are none either, it accepts no SNP guest at all: a KBS never
releases a key to "any image".
"""

from __future__ import annotations

import functools
import json
import tomllib
from dataclasses import dataclass, replace

from cvmstore.attest._json import strict_json
from cvmstore.attest.policy import Policy, parse_policy, policy_to_dict
from cvmstore.errors import FormatError
from cvmstore.kbs.binding import BINDINGS

__all__ = ["TEES", "KbsPolicy", "parse_kbs_policy"]

TEES = ("snp", "sample")


@dataclass(frozen=True, slots=True)
class KbsPolicy:
    """A validated KBS policy."""

    snp: Policy
    tees: tuple[str, ...] = ("snp",)
    bindings: tuple[str, ...] = ("trustee",)

    def document(self) -> str:
        """The canonical JSON text stored in the database; `parse_kbs_policy` reads it back."""
        data = {
            "tees": list(self.tees),
            "bindings": list(self.bindings),
            **policy_to_dict(self.snp),
        }
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def with_references(self, measurements: list[bytes]) -> Policy | None:
        """The SNP policy to apply: its own measurements, else the registered references.

        None when neither exists: no SNP evidence can satisfy the policy.
        """
        if self.snp.measurements is not None:
            return self.snp
        if not measurements:
            return None
        return replace(self.snp, measurements=tuple(measurements))


DEFAULT_POLICY = KbsPolicy(Policy())


def parse_kbs_policy(text: str | bytes, *, source: str = "policy") -> KbsPolicy:
    """Parse a KBS policy from TOML or JSON text.

    Raises:
        FormatError: not TOML or JSON, or a key, type or value the schema refuses.
    """
    return _parse_cached(text, source)


@functools.lru_cache(maxsize=256)
def _parse_cached(text: str | bytes, source: str) -> KbsPolicy:
    # Every ledger and resource request re-reads its stored policy: parse each text once.
    # (A FormatError is not cached: the next call parses again and raises again.)
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise FormatError(f"{source}: the policy is not UTF-8 text") from None
    data: object
    if text.lstrip().startswith("{"):
        data = strict_json(text, source)
    else:
        try:
            data = tomllib.loads(text)
        except (ValueError, RecursionError) as exc:
            raise FormatError(f"{source}: neither JSON nor valid TOML: {exc}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{source}: expected a table (JSON object)")
    rest = dict(data)
    tees = _choices(rest.pop("tees", ["snp"]), TEES, "tees", source)
    bindings = _choices(rest.pop("bindings", ["trustee"]), BINDINGS, "bindings", source)
    return KbsPolicy(parse_policy(rest, source=source), tees, bindings)


def _choices(value: object, allowed: tuple[str, ...], key: str, source: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise FormatError(f"{source}: {key}: expected a non-empty list of {', '.join(allowed)}")
    for item in value:
        if item not in allowed:
            raise FormatError(f"{source}: {key}: {item!r} is not one of {', '.join(allowed)}")
    return tuple(dict.fromkeys(value))
