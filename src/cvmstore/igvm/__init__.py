"""IGVM files and the SEV-SNP launch measurement they produce (stands alone).

    from cvmstore.igvm import measure_snp, parse_igvm

    digest = measure_snp(parse_igvm(open("coconut-qemu.igvm", "rb").read())).hex

docs/igvm.md explains the digest, its two reference variants (`style=`), `native_zero` and
`check_kvm`.
"""

from cvmstore.igvm.format import Header as Header
from cvmstore.igvm.format import HeaderType as HeaderType
from cvmstore.igvm.format import IgvmBuilder as IgvmBuilder
from cvmstore.igvm.format import IgvmFile as IgvmFile
from cvmstore.igvm.format import PageDataFlags as PageDataFlags
from cvmstore.igvm.format import PageDataType as PageDataType
from cvmstore.igvm.format import PlatformType as PlatformType
from cvmstore.igvm.format import parse_igvm as parse_igvm
from cvmstore.igvm.measure import Measurement as Measurement
from cvmstore.igvm.measure import PageType as PageType
from cvmstore.igvm.measure import measure_snp as measure_snp

__all__ = [
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
]
