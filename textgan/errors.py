"""Error messages shared by every public boundary: name the key, the value and the choices."""

from __future__ import annotations

import difflib


def did_you_mean(value, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def choice_error(key: str, value, choices) -> str:
    """"`key` must be one of [...], got 'value' (did you mean ...?)"."""
    return f"`{key}` must be one of {list(choices)}, got '{value}'{did_you_mean(value, choices)}"
