"""A KBS over TLS: the guest trusts only the CA it is given; another identity is a forged KBS."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cvmstore.block.memory import MemoryDevice
from cvmstore.errors import KbsIdentityError
from cvmstore.guest import GuestConfig, boot
from cvmstore.kbs.admin import AdminClient
from cvmstore.kbs.evidence_source import SimulatorEvidence
from cvmstore.kbs.repository import Repository
from tests.kbs.live import MEASUREMENT, SIMULATOR, live_kbs


def make_ca(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA (its certificate file) and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / f"{name}-{p}.pem" for p in ("ca", "cert", "key"))
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


def test_the_guest_accepts_only_the_kbs_its_ca_vouches_for(
    tmp_path: Path, repository: Repository
) -> None:
    ca, cert, key = make_ca(tmp_path, "real")
    other_ca, _, _ = make_ca(tmp_path, "impostor")
    with live_kbs(tmp_path / "kbs", repository, tls_certificate=cert, tls_key=key) as kbs:
        assert kbs.url.startswith("https://")
        with AdminClient(kbs.url, kbs.admin_token, verify=str(ca)) as admin:
            admin.add_reference(MEASUREMENT.hex())
            admin.create_volume("vtpm", f'measurements = ["{MEASUREMENT.hex()}"]')
        evidence = SimulatorEvidence(SIMULATOR, {"measurement": MEASUREMENT})

        def config(verify: bool | str) -> GuestConfig:
            return GuestConfig(
                kbs.url, "vtpm", evidence, kbs_key=kbs.thumbprint, verify=verify, retries=2
            )

        device = MemoryDevice(256)
        for wrong in (str(other_ca), True):  # another CA; the system's CAs
            with pytest.raises(KbsIdentityError, match="TLS identity"):
                boot(device, config(wrong))
        assert device.image() == bytes(len(device.image()))  # nothing written
        with boot(device, config(str(ca))) as booted:
            assert booted.formatted
            booted.fs.write_file("/nv", b"over TLS")
