"""Text from outside (profile names, file names, cloud replies) made safe to show on a terminal.

A control character sent raw can move the cursor, rewrite what was printed before, change the
terminal's title or, on some terminals, answer back as if typed: every C0 and C1 control and
DEL is shown as a visible escape instead (`\\x1b`, `\\n`, `\\u009b`). Cheap to import: the CLI
edge uses it on every error line.
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def escape_controls(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control character written out; `keep_newlines` leaves line breaks (and only those)."""
    if keep_newlines:
        return "\n".join(_CONTROLS.sub(_visible, line) for line in text.split("\n"))
    return _CONTROLS.sub(_visible, text)
