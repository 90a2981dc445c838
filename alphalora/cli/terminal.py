"""Text bound for the terminal, made inert: control characters in run names, errors, model and
tensor names or log lines (ANSI/OSC escape sequences, CR/LF, other C0 and C1 controls, bidi
overrides) are shown as visible escapes, so stored text can never rewrite the screen, set the
window title or fake extra lines."""

from __future__ import annotations

import re
from typing import Any

_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\x1b"}


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(value: Any, *, keep_newlines: bool = False) -> str:
    """``value`` as text with every control character escaped (``\\x1b``, ``\\r``, ``\\n``, …);
    ``keep_newlines`` leaves line breaks of multi-line messages as they are."""
    text = str(value)
    if keep_newlines:
        return "\n".join(_CONTROLS.sub(_escape, line) for line in text.split("\n"))
    return _CONTROLS.sub(_escape, text)


def clean_log_line(line: str) -> str:
    """A log line as a terminal would end up showing it (the text after its last carriage
    return, as progress bars redraw), with the remaining control characters escaped."""
    return clean(line.rsplit("\r", 1)[-1])
