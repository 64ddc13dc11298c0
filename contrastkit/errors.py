"""User-facing errors.

Anything the user can fix (a bad path, an out-of-range parameter, a malformed input line)
raises :class:`UsageError`. The CLI turns it into a one-line message and exit code 2; the
Python API lets it propagate as a ``ValueError``.

This module is the one leaf that the registry and the model loader share: it imports nothing
of contrastkit's.
"""

from __future__ import annotations

import difflib


class UsageError(ValueError):
    """Bad user input: the message says what was wrong and what is valid."""


def check_range(name: str, value, lo=None, hi=None, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """Raise :class:`UsageError` unless ``lo <= value <= hi`` (bounds optional, open if asked)."""
    if value is None:
        return
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and (value >= hi if hi_open else value > hi)
    )
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise UsageError(f"{name} must be in {rng}, got {value!r}")


def did_you_mean(name: str, choices) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""
