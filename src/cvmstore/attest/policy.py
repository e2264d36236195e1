"""A declarative attestation policy: which authentic SEV-SNP reports to accept.

`verify_report` proves a report is authentic (AMD chain, signature, TCB and chip binding);
`check_policy` then decides whether that authentic report is *acceptable*. A policy is a TOML
or JSON document; `docs/attestation-policy.md` has a full commented example. Every key is
optional; an absent key takes the default below. Unknown keys, wrong types, bad hex, wrong
lengths and out-of-range numbers are refused with a `FormatError` that names the key.

Schema (version 1). Bytes are hex strings (either case, no prefix): hexN is N bytes, 2N digits.

    key                     type (default)                rule, and its check name
    schema                  integer (1)                   the schema version; others are refused
    measurements            list of hex48 (any)           MEASUREMENT is one of them  [measurement]
    [tcb] which             "reported", "committed",      the TCB values the minimums apply to
                            "launch", "current", or a
                            list of them ("reported")
    [tcb] bootloader, tee,  integer 0-255 (0)             minimum level of that component  [tcb]
          snp, microcode
    [tcb] fmc               integer 0-255 (0)             the same; only Turin-layout TCBs have an
                                                          FMC, so a non-zero floor fails every
                                                          Milan or Genoa report  [tcb]
    allow_debug             bool (false)                  POLICY.DEBUG may be set  [debug]
    allow_migration_agent   bool (false)                  POLICY.MIGRATE_MA may be set  [migrate-ma]
    allow_smt               bool (true)                   if false: POLICY.SMT and PLATFORM_INFO
                                                          SMT_EN must both be clear  [smt]
    vmpl                    0-3 or a list of them (0)     VMPL is one of them (0: SVSM)  [vmpl]
    min_guest_svn           integer 0-2^32-1 (0)          GUEST_SVN is at least this (ID block:
                                                          see below)  [guest-svn]
    min_abi                 "major.minor" ("0.0")         POLICY.ABI_MAJOR.MINOR, the ABI the guest
                                                          requires of the firmware, is at least
                                                          this  [policy-abi]
    family_ids              list of hex16 (any)           FAMILY_ID is one of them (ID block)
                                                          [family-id]
    image_ids               list of hex16 (any)           IMAGE_ID is one of them (ID block)
                                                          [image-id]
    host_data               list of hex32 (any)           HOST_DATA is one of them  [host-data]
    id_key_digests          list of hex48 (any)           ID_KEY_DIGEST is one of them  [id-key]
    author_key_digests      list of hex48 (any)           AUTHOR_KEY_EN is set and AUTHOR_KEY_DIGEST
                                                          is one of them  [author-key]
    chip_ids                list of hex64 or hex8 (any)   CHIP_ID is one of them; hex8 is a Turin
                                                          chip ID (the rest zero)  [chip-id]
    signing_keys            list of "vcek", "vlek"        the key that signed the report
                            (both)                        [signing-key]
    products                list of "Milan", "Genoa",     the product whose chain verified the
                            "Turin" (any)                 report  [product]
    report_data             hex64 (none)                  REPORT_DATA equals it  [report-data]

"Any" is the absence of the rule. A real deployment must list its `measurements` (a policy
without them accepts every guest image) and should set TCB minimums; an allow-list given as
an empty list is refused rather than read as "nothing is allowed", and so is an all-zero
entry in `id_key_digests`, `author_key_digests` or `chip_ids` ("no key", "masked chip").
JSON may also spell an absent allow-list, `products` or `report_data` as `null`, which is
what `policy_to_dict` writes.

GUEST_SVN, FAMILY_ID and IMAGE_ID come from the ID block, which the host supplies at launch
and signs with an ID key of its own choosing; they mean something only when the key is
pinned. So `min_guest_svn` (above 0), `family_ids` and `image_ids` are refused unless
`id_key_digests` or `author_key_digests` is set too (`FormatError` from `parse_policy`,
`ValueError` from `Policy`).

TCB levels are numbered per product (Milan and Genoa have no FMC; Turin's start again at
low numbers). A policy for one product should name it in `products`; a non-zero `tcb.fmc`
is a Turin floor, and a report whose TCB has no FMC component fails it (check `tcb`) rather
than skipping it.

REPORT_DATA is normally the caller's binding (a nonce, the hash of a TEE public key) and is
passed to `check_policy(..., report_data=...)`. A fixed `report_data` in the policy is for
tests and fixed deployments; when both are given they must be equal, otherwise the policy
and the caller contradict each other and `check_policy` raises `FormatError` before looking
at the report. The comparison is constant-time.

`check_policy` runs the checks in the order of `CHECKS` and raises `PolicyError` with `check`
set to the name of the first one that fails; `policy_failures` lists every failure.
"""

from __future__ import annotations

import difflib
import hmac
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from cvmstore.attest._json import strict_json
from cvmstore.attest.report import AttestationReport, SigningKey
from cvmstore.attest.tcb import Product, TcbVersion
from cvmstore.attest.verify import VerifiedReport
from cvmstore.errors import FormatError, PolicyError, UnsupportedVersionError

__all__ = [
    "CHECKS",
    "SCHEMA_VERSION",
    "TCB_COMPONENTS",
    "TCB_WHICH",
    "Policy",
    "TcbMinimum",
    "check_policy",
    "load_policy",
    "parse_policy",
    "policy_failures",
    "policy_to_dict",
]

SCHEMA_VERSION = 1

#: The TCB values of a report that minimums can apply to.
TCB_WHICH = ("reported", "committed", "launch", "current")

#: The TCB components, by the names VCEKs and policies use.
TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")

#: Every check `check_policy` runs, in the order it runs them.
CHECKS = (
    "signing-key",
    "product",
    "debug",
    "migrate-ma",
    "smt",
    "vmpl",
    "policy-abi",
    "tcb",
    "measurement",
    "guest-svn",
    "family-id",
    "image-id",
    "id-key",
    "author-key",
    "host-data",
    "chip-id",
    "report-data",
)

_T = TypeVar("_T")
_REPORT_DATA_SIZE = 64
_U32 = 2**32 - 1
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")
_ABI = re.compile(r"([0-9]{1,3})\.([0-9]{1,3})")
_SIGNING_KEYS = {"vcek": SigningKey.VCEK, "vlek": SigningKey.VLEK}

# allow-list key -> (allowed sizes in bytes, whether an all-zero value may be listed)
_ALLOW_LISTS: dict[str, tuple[tuple[int, ...], bool]] = {
    "measurements": ((48,), True),
    "family_ids": ((16,), True),
    "image_ids": ((16,), True),
    "host_data": ((32,), True),
    # all zeros means "no ID block" / "no author key": listing it would defeat the rule
    "id_key_digests": ((48,), False),
    "author_key_digests": ((48,), False),
    # all zeros is a masked chip ID, which identifies no chip
    "chip_ids": ((64, 8), False),
}
_BOOLS = ("allow_debug", "allow_migration_agent", "allow_smt")
_TOP_KEYS = (
    "schema",
    "measurements",
    "tcb",
    *_BOOLS,
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
)
_TCB_KEYS = ("which", *TCB_COMPONENTS)
#: Rules on ID block fields: they need a pinned ID or author key.
_ID_BLOCK_KEYS = ("min_guest_svn", "family_ids", "image_ids")


@dataclass(frozen=True, slots=True)
class TcbMinimum:
    """Minimum security patch level per TCB component, and which TCB values must meet them.

    Milan and Genoa have no FMC component: a non-zero `fmc` fails their reports.
    """

    which: tuple[str, ...] = ("reported",)
    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int = 0

    def __post_init__(self) -> None:
        if not self.which:
            raise ValueError("tcb.which: expected a non-empty list")
        for name in self.which:
            if name not in TCB_WHICH:
                raise ValueError(f"tcb.which: {_show(name)} is not one of {', '.join(TCB_WHICH)}")
        if len(set(self.which)) != len(self.which):
            raise ValueError("tcb.which: a TCB is named twice")
        for component in TCB_COMPONENTS:
            _check_int(f"tcb.{component}", getattr(self, component), 0, 255)

    def minimums(self) -> dict[str, int]:
        """Component -> minimum level."""
        return {component: getattr(self, component) for component in TCB_COMPONENTS}


@dataclass(frozen=True, slots=True)
class Policy:
    """A validated attestation policy (see the module docstring for each rule).

    None for an allow-list means "any value"; a real deployment must at least list its
    `measurements`. Build one with `parse_policy` or `load_policy`, or directly (values are
    validated either way: `ValueError` or `TypeError` from the constructor).
    """

    measurements: tuple[bytes, ...] | None = None
    tcb: TcbMinimum = field(default_factory=TcbMinimum)
    allow_debug: bool = False
    allow_migration_agent: bool = False
    allow_smt: bool = True
    vmpl: tuple[int, ...] = (0,)
    min_guest_svn: int = 0
    min_abi: tuple[int, int] = (0, 0)
    family_ids: tuple[bytes, ...] | None = None
    image_ids: tuple[bytes, ...] | None = None
    host_data: tuple[bytes, ...] | None = None
    id_key_digests: tuple[bytes, ...] | None = None
    author_key_digests: tuple[bytes, ...] | None = None
    chip_ids: tuple[bytes, ...] | None = None
    signing_keys: tuple[SigningKey, ...] = (SigningKey.VCEK, SigningKey.VLEK)
    products: tuple[Product, ...] | None = None
    report_data: bytes | None = None

    def __post_init__(self) -> None:
        for key, (sizes, zero_ok) in _ALLOW_LISTS.items():
            _check_allow_list(key, getattr(self, key), sizes, zero_ok)
        if not isinstance(self.tcb, TcbMinimum):
            raise TypeError("tcb: expected a TcbMinimum")
        for key in _BOOLS:
            if not isinstance(getattr(self, key), bool):
                raise TypeError(f"{key}: expected a bool")
        if not self.vmpl:
            raise ValueError("vmpl: expected a non-empty list")
        for level in self.vmpl:
            _check_int("vmpl", level, 0, 3)
        _check_int("min_guest_svn", self.min_guest_svn, 0, _U32)
        _check_int("min_abi (major)", self.min_abi[0], 0, 255)
        _check_int("min_abi (minor)", self.min_abi[1], 0, 255)
        if not self.signing_keys:
            raise ValueError("signing_keys: expected a non-empty list")
        for signer in self.signing_keys:
            if signer not in (SigningKey.VCEK, SigningKey.VLEK):
                raise ValueError(f"signing_keys: {signer!r} is not VCEK or VLEK")
        if self.products is not None:
            if not self.products:
                raise ValueError("products: expected a non-empty list")
            for product in self.products:
                if not isinstance(product, Product):
                    raise TypeError(f"products: {product!r} is not a Product")
        if not (self.id_key_digests or self.author_key_digests):
            # The host writes and signs the ID block with a key of its choosing: its fields
            # mean something only when the policy pins that key.
            for key in _ID_BLOCK_KEYS:
                if getattr(self, key):
                    raise ValueError(
                        f"{key}: comes from the ID block, which the host signs with a key of "
                        "its choosing; also set id_key_digests or author_key_digests"
                    )
        if self.report_data is not None and len(self.report_data) != _REPORT_DATA_SIZE:
            size = len(self.report_data)
            raise ValueError(
                f"report_data: {size} bytes ({2 * size} hex digits),"
                f" expected {2 * _REPORT_DATA_SIZE} hex digits"
            )


def _check_int(key: str, value: object, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{key}: expected an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{key}: {_show(value)} is outside {low}-{high}")


def _check_allow_list(key: str, value: object, sizes: tuple[int, ...], zero_ok: bool) -> None:
    if value is None:
        return
    if not isinstance(value, tuple):
        raise TypeError(f"{key}: expected a tuple of bytes or None")
    if not value:
        raise ValueError(f"{key}: an empty list allows nothing; omit the key to allow any value")
    digits = " or ".join(str(2 * size) for size in sizes)
    for index, item in enumerate(value):
        if not isinstance(item, bytes):
            raise TypeError(f"{key}[{index}]: expected bytes")
        if len(item) not in sizes:
            raise ValueError(
                f"{key}[{index}]: {len(item)} bytes ({2 * len(item)} hex digits),"
                f" expected {digits} hex digits"
            )
        if not zero_ok and not any(item):
            raise ValueError(f"{key}[{index}]: an all-zero value cannot be allow-listed")


# ------------------------------------------------------------------------- parsing


def parse_policy(data: Mapping[str, object], *, source: str = "policy") -> Policy:
    """Validate a decoded TOML or JSON document and build the policy it describes.

    Args:
        data: the document (the mapping `tomllib` or `json` returns).
        source: where it came from (a file name), the prefix of every error message.

    Raises:
        FormatError: not a table, an unknown key, a wrong type, bad hex, a wrong length or a
            value out of range; the message names the key.
        UnsupportedVersionError: a `schema` other than 1.
    """
    return _Reader(source).policy(data)


class _Reader:
    """Turns a decoded document into a `Policy`; every error names its key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, message: str) -> FormatError:
        return FormatError(f"{self.source}: {key}: {message}")

    def policy(self, data: object) -> Policy:
        if not isinstance(data, Mapping):
            raise FormatError(f"{self.source}: expected a table (JSON object), not {_kind(data)}")
        self.keys(data, _TOP_KEYS, "")
        schema = self.integer("schema", data.get("schema", SCHEMA_VERSION))
        if schema != SCHEMA_VERSION:
            raise UnsupportedVersionError(
                f"{self.source}: schema: version {_show(schema)} is not supported"
                f" (this code reads {SCHEMA_VERSION})"
            )
        args: dict[str, object] = {}
        for key in _ALLOW_LISTS:
            if data.get(key) is not None:
                args[key] = self.hex_list(key, data[key])
        for key in _BOOLS:
            if key in data:
                if not isinstance(data[key], bool):
                    raise self.error(key, f"expected true or false, not {_kind(data[key])}")
                args[key] = data[key]
        if "vmpl" in data:
            args["vmpl"] = self.int_or_list("vmpl", data["vmpl"])
        if "min_guest_svn" in data:
            args["min_guest_svn"] = self.integer("min_guest_svn", data["min_guest_svn"])
        if "min_abi" in data:
            args["min_abi"] = self.abi(data["min_abi"])
        if "signing_keys" in data:
            args["signing_keys"] = self.signing_keys(data["signing_keys"])
        if data.get("products") is not None:
            args["products"] = self.products(data["products"])
        if data.get("report_data") is not None:
            args["report_data"] = self.hex("report_data", data["report_data"])
        try:
            if "tcb" in data:
                args["tcb"] = self.tcb(data["tcb"])
            return Policy(**args)  # type: ignore[arg-type]  # each value's type was checked
        except (TypeError, ValueError) as exc:  # ranges and lengths, checked by the classes
            raise FormatError(f"{self.source}: {exc}") from None

    def keys(self, table: Mapping[object, object], known: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if not isinstance(key, str):
                raise self.error(f"{prefix}{_show(key)}", "keys must be strings")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
                shown = key if len(key) <= 40 else f"{key[:37]}..."
                raise self.error(f"{prefix}{shown}", f"unknown key{hint}")

    def integer(self, key: str, value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, f"expected an integer, not {_kind(value)}")
        return value

    def items(self, key: str, value: object, what: str) -> list[object]:
        if not isinstance(value, list | tuple):
            raise self.error(key, f"expected a list of {what}, not {_kind(value)}")
        if not value:
            raise self.error(key, "an empty list allows nothing; omit the key to allow any value")
        return list(value)

    def hex(self, key: str, value: object) -> bytes:
        if not isinstance(value, str):
            raise self.error(key, f"expected a hex string, not {_kind(value)}")
        if not _HEX.fullmatch(value):
            raise self.error(key, "expected hex digits (an even number of 0-9, a-f)")
        return bytes.fromhex(value)

    def hex_list(self, key: str, value: object) -> tuple[bytes, ...]:
        items = self.items(key, value, "hex strings")
        return _unique(self.hex(f"{key}[{index}]", item) for index, item in enumerate(items))

    def int_or_list(self, key: str, value: object) -> tuple[int, ...]:
        if isinstance(value, int) and not isinstance(value, bool):
            return (value,)
        items = self.items(key, value, "integers")
        return _unique(self.integer(f"{key}[{index}]", item) for index, item in enumerate(items))

    def abi(self, value: object) -> tuple[int, int]:
        match = _ABI.fullmatch(value) if isinstance(value, str) else None
        if match is None:
            raise self.error(
                "min_abi", f'expected "major.minor" such as "1.51", not {_show(value)}'
            )
        return int(match[1]), int(match[2])

    def signing_keys(self, value: object) -> tuple[SigningKey, ...]:
        keys: list[SigningKey] = []
        for index, item in enumerate(self.items("signing_keys", value, "key names")):
            key = _SIGNING_KEYS.get(item.lower()) if isinstance(item, str) else None
            if key is None:
                raise self.error(
                    f"signing_keys[{index}]", f'expected "vcek" or "vlek", not {_show(item)}'
                )
            keys.append(key)
        return _unique(keys)

    def products(self, value: object) -> tuple[Product, ...]:
        by_name = {product.value.lower(): product for product in Product}
        found: list[Product] = []
        for index, item in enumerate(self.items("products", value, "product names")):
            product = by_name.get(item.lower()) if isinstance(item, str) else None
            if product is None:
                raise self.error(
                    f"products[{index}]", f'expected "Milan", "Genoa" or "Turin", not {_show(item)}'
                )
            found.append(product)
        return _unique(found)

    def tcb(self, value: object) -> TcbMinimum:
        if not isinstance(value, Mapping):
            raise self.error("tcb", f"expected a table, not {_kind(value)}")
        self.keys(value, _TCB_KEYS, "tcb.")
        args: dict[str, object] = {}
        if "which" in value:
            which = value["which"]
            names = [which] if isinstance(which, str) else self.items("tcb.which", which, "names")
            for index, name in enumerate(names):
                if not isinstance(name, str):
                    raise self.error(f"tcb.which[{index}]", f"expected a string, not {_kind(name)}")
            args["which"] = tuple(names)
        for component in TCB_COMPONENTS:
            if component in value:
                args[component] = self.integer(f"tcb.{component}", value[component])
        return TcbMinimum(**args)  # type: ignore[arg-type]  # each value's type was checked


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


def _show(value: object, limit: int = 40) -> str:
    """A short repr for error messages (never fails: huge integers have no repr)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return _kind(value)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _kind(value: object) -> str:
    """The document type of a value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and validate a policy file: TOML (`.toml`) or JSON (`.json`); otherwise either.

    Raises:
        FormatError: the file cannot be read, is not UTF-8, TOML or JSON, or does not follow
            the schema (see `parse_policy`).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot read the policy: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise FormatError(f"{path}: the policy is not UTF-8 text") from None
    data: object
    suffix = path.suffix.lower()
    if suffix == ".toml":
        data = _decode_toml(text, path)
    elif suffix == ".json":
        data = _decode_json(text, path)
    else:
        try:
            data = _decode_toml(text, path)
        except FormatError as toml_error:
            try:
                data = _decode_json(text, path)
            except FormatError as json_error:
                raise FormatError(
                    f"{path}: neither TOML ({_cause(toml_error)}) nor JSON ({_cause(json_error)})"
                ) from None
    return _Reader(str(path)).policy(data)


def _decode_toml(text: str, path: Path) -> dict[str, object]:
    try:
        return tomllib.loads(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError, or a number too long
        raise FormatError(f"{path}: not valid TOML: {exc}") from None


def _decode_json(text: str, path: Path) -> object:
    return strict_json(text, str(path))


def _cause(error: FormatError) -> str:
    return str(error).split(": ", 2)[-1]


def policy_to_dict(policy: Policy) -> dict[str, object]:
    """The policy as a JSON-ready document, every key present; `parse_policy` reads it back.

    Rules that are absent ("any value") are None (JSON null).
    """

    def hexes(values: tuple[bytes, ...] | None) -> list[str] | None:
        return None if values is None else [value.hex() for value in values]

    return {
        "schema": SCHEMA_VERSION,
        "measurements": hexes(policy.measurements),
        "tcb": {"which": list(policy.tcb.which), **policy.tcb.minimums()},
        "allow_debug": policy.allow_debug,
        "allow_migration_agent": policy.allow_migration_agent,
        "allow_smt": policy.allow_smt,
        "vmpl": list(policy.vmpl),
        "min_guest_svn": policy.min_guest_svn,
        "min_abi": f"{policy.min_abi[0]}.{policy.min_abi[1]}",
        "family_ids": hexes(policy.family_ids),
        "image_ids": hexes(policy.image_ids),
        "host_data": hexes(policy.host_data),
        "id_key_digests": hexes(policy.id_key_digests),
        "author_key_digests": hexes(policy.author_key_digests),
        "chip_ids": hexes(policy.chip_ids),
        "signing_keys": [key.name.lower() for key in policy.signing_keys],
        "products": None if policy.products is None else [p.value for p in policy.products],
        "report_data": None if policy.report_data is None else policy.report_data.hex(),
    }


# ------------------------------------------------------------------------- checking


def check_policy(
    verified: VerifiedReport, policy: Policy, *, report_data: bytes | None = None
) -> None:
    """Accept the verified report under `policy`, or raise on the first failed check.

    Args:
        verified: the report `verify_report` accepted.
        policy: the rules.
        report_data: the 64 bytes REPORT_DATA must equal (the caller's binding: nonce, key
            hash). When the policy also has `report_data`, the two must be equal.

    Raises:
        PolicyError: a rule fails; `check` names it (one of `CHECKS`).
        FormatError: the policy's `report_data` and the caller's differ.
        ValueError: `report_data` is not 64 bytes.
    """
    expected = _expected_report_data(policy, report_data)
    for check, message in _failures(verified, policy, expected):
        raise PolicyError(message, check=check)


def policy_failures(
    verified: VerifiedReport, policy: Policy, *, report_data: bytes | None = None
) -> list[PolicyError]:
    """Every rule the report fails, in the order of `CHECKS` (empty: accepted).

    Arguments and exceptions as for `check_policy`, which raises the first of these.
    """
    expected = _expected_report_data(policy, report_data)
    return [
        PolicyError(message, check=check)
        for check, message in _failures(verified, policy, expected)
    ]


def _expected_report_data(policy: Policy, report_data: bytes | None) -> bytes | None:
    if report_data is None:
        return policy.report_data
    if len(report_data) != _REPORT_DATA_SIZE:
        raise ValueError(f"report_data must be {_REPORT_DATA_SIZE} bytes, not {len(report_data)}")
    report_data = bytes(report_data)
    if policy.report_data is not None and not hmac.compare_digest(policy.report_data, report_data):
        raise FormatError(
            "the policy's report_data differs from the caller's binding: no report can match both"
        )
    return report_data


def _failures(
    verified: VerifiedReport, policy: Policy, expected: bytes | None
) -> Iterator[tuple[str, str]]:
    """(check, message) for every failed rule, in the order of `CHECKS`."""
    report = verified.report
    guest = report.policy
    if verified.signing_key not in policy.signing_keys:
        allowed = ", ".join(key.name for key in policy.signing_keys)
        yield (
            "signing-key",
            f"signed by the {verified.signing_key.name}; the policy allows {allowed}",
        )
    if policy.products is not None and verified.product not in policy.products:
        allowed = ", ".join(product.value for product in policy.products)
        yield (
            "product",
            f"the report comes from an AMD {verified.product.value}; the policy allows {allowed}",
        )
    if guest.debug and not policy.allow_debug:
        yield "debug", "the guest policy allows debugging (the host can read guest memory)"
    if guest.migrate_ma and not policy.allow_migration_agent:
        yield "migrate-ma", "the guest policy allows a migration agent"
    if not policy.allow_smt:
        if guest.smt:
            yield "smt", "the guest policy allows SMT; the policy requires it forbidden"
        elif report.platform_info.smt_enabled:
            yield "smt", "SMT is enabled on the platform; the policy forbids it"
    if report.vmpl not in policy.vmpl:
        allowed = " or ".join(str(level) for level in policy.vmpl)
        yield "vmpl", f"VMPL is {report.vmpl}; the policy requires {allowed}"
    if (guest.abi_major, guest.abi_minor) < policy.min_abi:
        yield (
            "policy-abi",
            f"the guest policy requires ABI {guest.abi_major}.{guest.abi_minor}; the policy"
            f" requires at least {policy.min_abi[0]}.{policy.min_abi[1]}",
        )
    tcb = _tcb_failure(report, policy.tcb)
    if tcb is not None:
        yield "tcb", tcb
    if policy.measurements is not None and report.measurement not in policy.measurements:
        yield (
            "measurement",
            f"MEASUREMENT {report.measurement.hex()} is not one of the"
            f" {len(policy.measurements)} the policy allows",
        )
    if report.guest_svn < policy.min_guest_svn:
        yield (
            "guest-svn",
            f"GUEST_SVN is {report.guest_svn}; the policy requires at least {policy.min_guest_svn}",
        )
    for check, name, value, allow_list in (
        ("family-id", "FAMILY_ID", report.family_id, policy.family_ids),
        ("image-id", "IMAGE_ID", report.image_id, policy.image_ids),
        ("id-key", "ID_KEY_DIGEST", report.id_key_digest, policy.id_key_digests),
    ):
        if allow_list is not None and value not in allow_list:
            yield check, f"{name} {value.hex()} is not one the policy allows"
    if policy.author_key_digests is not None:
        if not report.key_info.author_key_en:
            yield "author-key", "the guest has no author key (AUTHOR_KEY_EN is clear)"
        elif report.author_key_digest not in policy.author_key_digests:
            digest = report.author_key_digest.hex()
            yield "author-key", f"AUTHOR_KEY_DIGEST {digest} is not one the policy allows"
    if policy.host_data is not None and report.host_data not in policy.host_data:
        yield "host-data", f"HOST_DATA {report.host_data.hex()} is not one the policy allows"
    if policy.chip_ids is not None:
        if report.key_info.mask_chip_key or not any(report.chip_id):
            yield "chip-id", "the chip ID is masked, so it cannot be on the allow-list"
        elif not any(_chip_matches(report.chip_id, chip) for chip in policy.chip_ids):
            yield "chip-id", f"chip {report.chip_id.hex()[:16]}... is not on the allow-list"
    if expected is not None and not hmac.compare_digest(report.report_data, expected):
        yield "report-data", "REPORT_DATA does not match the expected binding"


def _tcb_failure(report: AttestationReport, minimum: TcbMinimum) -> str | None:
    floors = minimum.minimums()
    for which in minimum.which:
        value: TcbVersion = getattr(report, f"{which}_tcb")
        if floors["fmc"] and value.fmc is None:
            return (
                f"{which.upper()}_TCB has no FMC component; the policy requires fmc >= "
                f"{floors['fmc']} (a Turin floor: also set products)"
            )
        for component, level in value.components().items():
            if level < floors[component]:
                return (
                    f"{which.upper()}_TCB {component} is {level};"
                    f" the policy requires at least {floors[component]}"
                )
    return None


def _chip_matches(chip_id: bytes, allowed: bytes) -> bool:
    """A 64-byte entry is the whole CHIP_ID; an 8-byte one a Turin chip ID (the rest zero)."""
    return chip_id[: len(allowed)] == allowed and not any(chip_id[len(allowed) :])
