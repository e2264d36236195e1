"""Public test helpers, importable without pytest: integrators need them as much as we do.

- `check_block_device`: the `BlockDevice` contract as a conformance suite.
- `CrashDevice`: record a workload, then enumerate every state a crash could leave.
- `HostileDevice` and the surgeon functions: play the host that changes and replays blocks.
"""

from cvmstore.testing.conformance import check_block_device as check_block_device
from cvmstore.testing.crash import CrashDevice as CrashDevice
from cvmstore.testing.crash import CrashPoint as CrashPoint
from cvmstore.testing.crash import CrashState as CrashState
from cvmstore.testing.crash import exhaustive_state_count as exhaustive_state_count
from cvmstore.testing.hostile import HostileDevice as HostileDevice
from cvmstore.testing.hostile import clone_file as clone_file
from cvmstore.testing.hostile import flip_bit as flip_bit
from cvmstore.testing.hostile import restore as restore
from cvmstore.testing.hostile import snapshot as snapshot
from cvmstore.testing.hostile import swap_blocks as swap_blocks
from cvmstore.testing.hostile import truncate_file as truncate_file
from cvmstore.testing.hostile import zero_block as zero_block

__all__ = [
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
]
