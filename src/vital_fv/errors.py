"""One exception type for mistakes a user can fix; the CLI prints its message without a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class VitalError(Exception):
    """A problem with the user's input, explained in words that say what to do."""


def close_matches(word: str, choices: Iterable[str], n: int = 5) -> list[str]:
    """Names in ``choices`` close to ``word``: difflib's ratio, plus substring hits so 'cat' finds 'tabby cat'."""
    choices = list(choices)
    lowered = word.lower()
    hits = [c for c in choices if lowered in c.lower()]
    fuzzy = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    out: list[str] = []
    for c in fuzzy + hits:
        if c not in out:
            out.append(c)
    return out[:n]
