"""SEV-SNP attestation reports, versions 2 to 5: every field, decoded and re-encoded exactly.

Layout: AMD SEV-SNP ABI specification 56860, ATTESTATION_REPORT (0x4A0 bytes, little-endian);
docs/attestation.md reproduces the offset table. Decoding refuses anything the format does
not allow: another size or version, non-zero reserved bytes, reserved bits set, a signature
whose unused bytes are not zero. So a report that decodes re-encodes to the same bytes.
"""

from __future__ import annotations

import enum
import re
import struct
from dataclasses import dataclass, field

from cvmstore.attest.tcb import Product, TcbVersion, product_from_cpuid
from cvmstore.errors import FormatError, UnsupportedVersionError

__all__ = [
    "REPORT_SIZE",
    "SIGNED_SIZE",
    "AttestationReport",
    "GuestPolicy",
    "KeyInfo",
    "PlatformInfo",
    "SigningKey",
    "load_report",
]

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0  # the signature covers bytes 0x000-0x29F
VERSIONS = range(2, 6)
_HEX = re.compile(rb"[0-9a-fA-F\s]+")
_HCL_MAGIC = b"HCLA"  # Azure's HCL report: the SNP report follows a 0x20-byte header

# (offset, size) of every range that must be zero, by report version
_RESERVED_COMMON = ((0x04C, 4), (0x1EB, 1), (0x1EF, 1))
_RESERVED = {
    2: (*_RESERVED_COMMON, (0x188, 0x18), (0x1F8, 0xA8)),
    3: (*_RESERVED_COMMON, (0x18B, 0x15), (0x1F8, 0xA8)),
    4: (*_RESERVED_COMMON, (0x18B, 0x15), (0x1F8, 0xA8)),
    5: (*_RESERVED_COMMON, (0x18B, 0x15), (0x208, 0x98)),
}
_SIG_R, _SIG_S, _SIG_END = 0x2A0, 0x2E8, 0x330
_SCALAR = 48  # P-384 scalars; R and S are stored in 72-byte little-endian fields


class SigningKey(enum.IntEnum):
    """KEY_INFO.SIGNING_KEY: which endorsement key signed the report."""

    VCEK = 0
    VLEK = 1
    NONE = 7


@dataclass(frozen=True, slots=True)
class GuestPolicy:
    """The guest policy (POLICY, 64 bits) with its named bits."""

    value: int

    KNOWN_BITS = (1 << 26) - 1  # bits 0-25 are defined (25: PAGE_SWAP_DISABLE, v5)

    @property
    def abi_minor(self) -> int:
        """Minimum ABI minor version."""
        return self.value & 0xFF

    @property
    def abi_major(self) -> int:
        """Minimum ABI major version."""
        return self.value >> 8 & 0xFF

    def bit(self, index: int) -> bool:
        """Whether bit `index` is set."""
        return bool(self.value >> index & 1)

    @property
    def smt(self) -> bool:
        """SMT is allowed."""
        return self.bit(16)

    @property
    def migrate_ma(self) -> bool:
        """Association with a migration agent is allowed."""
        return self.bit(18)

    @property
    def debug(self) -> bool:
        """Debugging is allowed (the host can read guest memory)."""
        return self.bit(19)

    @property
    def single_socket(self) -> bool:
        """The guest may run on one socket only."""
        return self.bit(20)

    def flags(self) -> dict[str, bool]:
        """Every named flag."""
        names = {
            16: "smt",
            18: "migrate_ma",
            19: "debug",
            20: "single_socket",
            21: "cxl_allow",
            22: "mem_aes_256_xts",
            23: "rapl_dis",
            24: "ciphertext_hiding",
            25: "page_swap_disable",
        }
        return {name: self.bit(index) for index, name in names.items()}


@dataclass(frozen=True, slots=True)
class PlatformInfo:
    """PLATFORM_INFO: what the platform had enabled when the report was made."""

    value: int

    def flags(self) -> dict[str, bool]:
        """Every named flag."""
        names = {
            0: "smt_enabled",
            1: "tsme_enabled",
            2: "ecc_enabled",
            3: "rapl_disabled",
            4: "ciphertext_hiding_enabled",
            5: "alias_check_complete",
            7: "sev_tio_enabled",
        }
        return {name: bool(self.value >> index & 1) for index, name in names.items()}

    @property
    def smt_enabled(self) -> bool:
        """SMT was enabled on the platform."""
        return bool(self.value & 1)


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """KEY_INFO (signer info): author key, chip-ID masking, and which key signed."""

    value: int

    @property
    def author_key_en(self) -> bool:
        """AUTHOR_KEY_DIGEST holds the digest of an author key."""
        return bool(self.value & 1)

    @property
    def mask_chip_key(self) -> bool:
        """The chip ID is masked (reported as zeros)."""
        return bool(self.value >> 1 & 1)

    @property
    def signing_key(self) -> SigningKey:
        """Which endorsement key signed the report."""
        return SigningKey(self.value >> 2 & 7)


@dataclass(frozen=True, slots=True)
class AttestationReport:
    """One SEV-SNP attestation report. `decode` checks the format; `encode` inverts it."""

    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb: TcbVersion
    platform_info: PlatformInfo
    key_info: KeyInfo
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb: TcbVersion
    cpuid_fam_id: int
    cpuid_mod_id: int
    cpuid_step: int
    chip_id: bytes
    committed_tcb: TcbVersion
    current_build: int
    current_minor: int
    current_major: int
    committed_build: int
    committed_minor: int
    committed_major: int
    launch_tcb: TcbVersion
    launch_mit_vector: int
    current_mit_vector: int
    signature_r: int
    signature_s: int
    product: Product | None = field(compare=False)

    # ---------------------------------------------------------------- decoding

    @classmethod
    def decode(cls, data: bytes) -> AttestationReport:
        """Decode exactly 0x4A0 bytes.

        Raises:
            UnsupportedVersionError: a version other than 2 to 5.
            FormatError: any other departure from the layout (with the offset).
        """
        if len(data) != REPORT_SIZE:
            raise FormatError(f"an SNP report is {REPORT_SIZE} bytes, not {len(data)}")
        data = bytes(data)
        (version,) = struct.unpack_from("<I", data, 0)
        if version not in VERSIONS:
            raise UnsupportedVersionError(f"SNP report version {version} is not supported (2-5)")
        for offset, size in _RESERVED[version]:
            if any(data[offset : offset + size]):
                raise FormatError("reserved bytes are not zero", offset=offset)
        (signature_algo,) = struct.unpack_from("<I", data, 0x34)
        if signature_algo != 1:
            raise FormatError(
                f"signature algorithm {signature_algo} is not ECDSA P-384 (1)", offset=0x34
            )
        (policy,) = struct.unpack_from("<Q", data, 0x08)
        if policy & ~GuestPolicy.KNOWN_BITS or not policy >> 17 & 1:
            raise FormatError("the policy sets reserved bits (bit 17 must be 1)", offset=0x08)
        (key_info,) = struct.unpack_from("<I", data, 0x48)
        if key_info & ~0x1F or (key_info >> 2 & 7) not in {key.value for key in SigningKey}:
            raise FormatError("KEY_INFO sets reserved bits or an unknown key", offset=0x48)
        for start in (_SIG_R, _SIG_S):
            if any(data[start + _SCALAR : start + 72]):
                raise FormatError("a signature scalar does not fit P-384", offset=start)
        if any(data[_SIG_END:]):
            raise FormatError("bytes after the signature are not zero", offset=_SIG_END)

        fam, mod, step = (data[0x188], data[0x189], data[0x18A]) if version >= 3 else (0, 0, 0)
        chip_id = data[0x1A0:0x1E0]
        product = product_from_cpuid(fam, mod) if version >= 3 else None
        turin = _turin_layout(version, fam, chip_id)
        if product is None and version == 2 and turin:
            product = Product.TURIN

        def tcb(offset: int) -> TcbVersion:
            value = TcbVersion.decode(data[offset : offset + 8], turin=turin)
            if not value.reserved_ok:
                raise FormatError("reserved TCB bytes are not zero", offset=offset)
            return value

        mit = version >= 5
        return cls(
            version=version,
            guest_svn=struct.unpack_from("<I", data, 0x04)[0],
            policy=GuestPolicy(policy),
            family_id=data[0x10:0x20],
            image_id=data[0x20:0x30],
            vmpl=struct.unpack_from("<I", data, 0x30)[0],
            signature_algo=signature_algo,
            current_tcb=tcb(0x38),
            platform_info=PlatformInfo(struct.unpack_from("<Q", data, 0x40)[0]),
            key_info=KeyInfo(key_info),
            report_data=data[0x50:0x90],
            measurement=data[0x90:0xC0],
            host_data=data[0xC0:0xE0],
            id_key_digest=data[0xE0:0x110],
            author_key_digest=data[0x110:0x140],
            report_id=data[0x140:0x160],
            report_id_ma=data[0x160:0x180],
            reported_tcb=tcb(0x180),
            cpuid_fam_id=fam,
            cpuid_mod_id=mod,
            cpuid_step=step,
            chip_id=chip_id,
            committed_tcb=tcb(0x1E0),
            current_build=data[0x1E8],
            current_minor=data[0x1E9],
            current_major=data[0x1EA],
            committed_build=data[0x1EC],
            committed_minor=data[0x1ED],
            committed_major=data[0x1EE],
            launch_tcb=tcb(0x1F0),
            launch_mit_vector=struct.unpack_from("<Q", data, 0x1F8)[0] if mit else 0,
            current_mit_vector=struct.unpack_from("<Q", data, 0x200)[0] if mit else 0,
            signature_r=int.from_bytes(data[_SIG_R : _SIG_R + 72], "little"),
            signature_s=int.from_bytes(data[_SIG_S : _SIG_S + 72], "little"),
            product=product,
        )

    # ---------------------------------------------------------------- encoding

    def encode(self) -> bytes:
        """The 0x4A0 bytes of this report."""
        out = bytearray(REPORT_SIZE)
        struct.pack_into("<IIQ", out, 0, self.version, self.guest_svn, self.policy.value)
        out[0x10:0x20] = _fixed(self.family_id, 16, "family_id")
        out[0x20:0x30] = _fixed(self.image_id, 16, "image_id")
        struct.pack_into("<II", out, 0x30, self.vmpl, self.signature_algo)
        out[0x38:0x40] = self.current_tcb.raw
        struct.pack_into("<QI", out, 0x40, self.platform_info.value, self.key_info.value)
        out[0x50:0x90] = _fixed(self.report_data, 64, "report_data")
        out[0x90:0xC0] = _fixed(self.measurement, 48, "measurement")
        out[0xC0:0xE0] = _fixed(self.host_data, 32, "host_data")
        out[0xE0:0x110] = _fixed(self.id_key_digest, 48, "id_key_digest")
        out[0x110:0x140] = _fixed(self.author_key_digest, 48, "author_key_digest")
        out[0x140:0x160] = _fixed(self.report_id, 32, "report_id")
        out[0x160:0x180] = _fixed(self.report_id_ma, 32, "report_id_ma")
        out[0x180:0x188] = self.reported_tcb.raw
        if self.version >= 3:
            out[0x188:0x18B] = bytes((self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step))
        out[0x1A0:0x1E0] = _fixed(self.chip_id, 64, "chip_id")
        out[0x1E0:0x1E8] = self.committed_tcb.raw
        out[0x1E8:0x1EB] = bytes((self.current_build, self.current_minor, self.current_major))
        out[0x1EC:0x1EF] = bytes((self.committed_build, self.committed_minor, self.committed_major))
        out[0x1F0:0x1F8] = self.launch_tcb.raw
        if self.version >= 5:
            struct.pack_into("<QQ", out, 0x1F8, self.launch_mit_vector, self.current_mit_vector)
        out[_SIG_R : _SIG_R + 72] = self.signature_r.to_bytes(72, "little")
        out[_SIG_S : _SIG_S + 72] = self.signature_s.to_bytes(72, "little")
        return bytes(out)

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers (0x000-0x29F)."""
        return self.encode()[:SIGNED_SIZE]

    @property
    def turin_layout(self) -> bool:
        """Whether this report's TCB values use the Turin layout."""
        return self.reported_tcb.fmc is not None

    def to_dict(self) -> dict[str, object]:
        """Every field, JSON-ready (bytes as hex, flags by name)."""

        def tcb(value: TcbVersion) -> dict[str, object]:
            return {**value.components(), "raw": value.raw.hex()}

        return {
            "version": self.version,
            "product": self.product.value if self.product else None,
            "guest_svn": self.guest_svn,
            "policy": {
                "value": hex(self.policy.value),
                "abi_major": self.policy.abi_major,
                "abi_minor": self.policy.abi_minor,
                **self.policy.flags(),
            },
            "family_id": self.family_id.hex(),
            "image_id": self.image_id.hex(),
            "vmpl": self.vmpl,
            "signature_algo": self.signature_algo,
            "current_tcb": tcb(self.current_tcb),
            "platform_info": {"value": hex(self.platform_info.value), **self.platform_info.flags()},
            "key_info": {
                "value": hex(self.key_info.value),
                "author_key_en": self.key_info.author_key_en,
                "mask_chip_key": self.key_info.mask_chip_key,
                "signing_key": self.key_info.signing_key.name,
            },
            "report_data": self.report_data.hex(),
            "measurement": self.measurement.hex(),
            "host_data": self.host_data.hex(),
            "id_key_digest": self.id_key_digest.hex(),
            "author_key_digest": self.author_key_digest.hex(),
            "report_id": self.report_id.hex(),
            "report_id_ma": self.report_id_ma.hex(),
            "reported_tcb": tcb(self.reported_tcb),
            "cpuid": {
                "family": self.cpuid_fam_id,
                "model": self.cpuid_mod_id,
                "stepping": self.cpuid_step,
            },
            "chip_id": self.chip_id.hex(),
            "committed_tcb": tcb(self.committed_tcb),
            "current_version": f"{self.current_major}.{self.current_minor}.{self.current_build}",
            "committed_version": (
                f"{self.committed_major}.{self.committed_minor}.{self.committed_build}"
            ),
            "launch_tcb": tcb(self.launch_tcb),
            "launch_mit_vector": hex(self.launch_mit_vector),
            "current_mit_vector": hex(self.current_mit_vector),
            "signature": {"r": hex(self.signature_r), "s": hex(self.signature_s)},
        }


def _turin_layout(version: int, family: int, chip_id: bytes) -> bool:
    """Whether TCB values use the Turin layout.

    From v3 on the CPUID family says so (0x1A and later). A v2 report has no CPUID, so the
    rule virtee uses applies: a Turin chip ID has 8 significant bytes and 56 zero ones (a
    masked, all-zero chip ID reads as Milan/Genoa). docs/attestation.md explains the choice.
    """
    if version >= 3:
        return family >= 0x1A
    return any(chip_id[:8]) and not any(chip_id[8:])


def _fixed(value: bytes, size: int, name: str) -> bytes:
    if len(value) != size:
        raise ValueError(f"{name} must be {size} bytes, not {len(value)}")
    return value


def load_report(data: bytes) -> AttestationReport:
    """Decode a report given as raw bytes, hex text, or an Azure HCL report (SNP at 0x20).

    Raises:
        FormatError: none of these shapes, or a malformed report.
    """
    data = bytes(data)
    if data.startswith(_HCL_MAGIC) and len(data) >= 0x20 + REPORT_SIZE:
        return AttestationReport.decode(data[0x20 : 0x20 + REPORT_SIZE])
    if len(data) != REPORT_SIZE and _HEX.fullmatch(data):
        text = b"".join(data.split())
        if len(text) == 2 * REPORT_SIZE:
            return AttestationReport.decode(bytes.fromhex(text.decode("ascii")))
    return AttestationReport.decode(data)
