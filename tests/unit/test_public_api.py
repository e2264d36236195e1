"""The exported names are deliberate: an accidental export or removal fails here."""

from __future__ import annotations

import importlib

import pytest

EXPECTED = {
    "cvmstore": [
        "AnchorPolicy",
        "FileAnchor",
        "NoAnchor",
        "SecureStore",
        "__version__",
        "format_store",
        "open_store",
    ],
    "cvmstore.crypto": ["GenerationCipher", "VolumeKeys", "derive_unlock_keys", "new_volume_key"],
    "cvmstore.integrity": [
        "Anchor",
        "AnchorPolicy",
        "AnchorState",
        "CheckReport",
        "FileAnchor",
        "MemoryAnchor",
        "NoAnchor",
        "SecureStore",
        "StoreInfo",
        "StoreState",
        "format_store",
        "open_store",
    ],
    "cvmstore.kbs": [
        "PROTOCOL_VERSION",
        "AdminClient",
        "ConfigfsEvidence",
        "EvidenceSource",
        "KbsAnchor",
        "KbsClient",
        "KbsConfig",
        "KbsPolicy",
        "LedgerAnswer",
        "SampleEvidence",
        "SimulatorEvidence",
        "load_config",
        "parse_kbs_policy",
    ],
    "cvmstore.block": [
        "SECTOR_SIZE",
        "BlockDevice",
        "FileDevice",
        "ImageProfile",
        "MemoryDevice",
        "check_image_size",
    ],
    "cvmstore.attest": [
        "AMD_ARK_PINS",
        "AttestationReport",
        "ConfigfsTsm",
        "Evidence",
        "Policy",
        "Product",
        "SigningKey",
        "Simulator",
        "TcbVersion",
        "Trust",
        "VerifiedReport",
        "check_policy",
        "load_certificates",
        "load_evidence",
        "load_policy",
        "load_report",
        "parse_policy",
        "verify_report",
    ],
    "cvmstore.igvm": [
        "Header",
        "HeaderType",
        "IgvmBuilder",
        "IgvmFile",
        "Measurement",
        "PageDataFlags",
        "PageDataType",
        "PageType",
        "PlatformType",
        "measure_snp",
        "parse_igvm",
    ],
    "cvmstore.fs": [
        "DirEntry",
        "Filesystem",
        "FsckReport",
        "Stat",
        "Usage",
        "make_filesystem",
        "open_filesystem",
    ],
    "cvmstore.testing": [
        "CrashDevice",
        "CrashPoint",
        "CrashState",
        "HostileDevice",
        "check_block_device",
        "clone_file",
        "exhaustive_state_count",
        "flip_bit",
        "restore",
        "snapshot",
        "swap_blocks",
        "truncate_file",
        "zero_block",
    ],
}


@pytest.mark.parametrize("module", sorted(EXPECTED))
def test_exports(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(EXPECTED[module])
    for name in mod.__all__:
        assert hasattr(mod, name), f"{module}.{name} is listed but missing"
