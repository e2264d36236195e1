"""`UsageError`: a usage problem found after parsing (a missing key, a bad option value)."""

__all__ = ["UsageError"]


class UsageError(Exception):
    """The command line exits with status 2 and the message, as for a parser error."""
