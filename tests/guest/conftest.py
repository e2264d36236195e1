"""The guest tests run against a real KBS on each backend (`repository`, from the KBS tests)."""

from tests.kbs.conftest import repository as repository

__all__ = ["repository"]
