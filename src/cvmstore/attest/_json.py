"""Strict JSON for untrusted documents: a key that appears twice is an error, not a guess."""

from __future__ import annotations

import json

from cvmstore.errors import FormatError

__all__ = ["strict_json"]


def strict_json(text: str | bytes, where: str) -> object:
    """Parse `text`; `FormatError` (naming `where`) for invalid JSON or a duplicated key.

    Another reader of the same bytes (serde, Go) may keep the first of two equal keys or
    refuse them; taking the last would let two readers disagree about one document.
    """

    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        table: dict[str, object] = {}
        for key, value in pairs:
            if key in table:
                raise FormatError(f"{where}: {key}: the key appears twice")
            table[key] = value
        return table

    try:
        return json.loads(text, object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{where}: not valid JSON: {exc}") from None
