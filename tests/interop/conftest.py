"""The interop tests that need a KBS run it on each backend (`repository`, from the KBS tests)."""

from tests.kbs.conftest import repository as repository

__all__ = ["repository"]
