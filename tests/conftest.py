"""Shared fixtures and hypothesis profiles.

Profiles (select with HYPOTHESIS_PROFILE): `ci` (the default) is derandomized with a bounded
number of examples, so CI is reproducible; `deep` is for long local soak runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("deep", max_examples=5_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parent.parent
#: Variables that steer the tests themselves, kept when the environment is scrubbed.
TEST_SETTINGS = {"CVMSTORE_VECTORS", "CVMSTORE_CRASH_BOUND", "CVMSTORE_TEST_POSTGRES"}


def in_ci() -> bool:
    """True under `.ci/run`, where nothing that CI provides may be skipped."""
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_or_skip(available: bool, what: str) -> None:
    """Skip when `what` is missing outside CI; fail when it is missing in CI."""
    if available:
        return
    if in_ci():
        pytest.fail(f"{what} is required when CI=true")
    pytest.skip(f"{what} is not available here")


@pytest.fixture
def vectors_dir() -> Path:
    """`../shared/vectors` from the project root, or CVMSTORE_VECTORS."""
    path = Path(os.environ.get("CVMSTORE_VECTORS", ROOT.parent / "shared" / "vectors"))
    require_or_skip(path.is_dir(), f"the shared test vectors ({path})")
    return path


@pytest.fixture(autouse=True)
def _scrub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's cvmstore settings out of every test."""
    for name in list(os.environ):
        if name.startswith("CVMSTORE_") and name not in TEST_SETTINGS:
            monkeypatch.delenv(name)
