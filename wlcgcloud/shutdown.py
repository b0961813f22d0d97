"""The HEPiX shutdown message: the code and short text a VM leaves when it powers itself off.

The codes are the HEPiX ones (GridPP wiki, "HEPiX shutdown command"; DIRAC's pilot maps its
exits to them). A VM launched with a shipped bootstrap leaves one on its serial console, as the
line `wlcgcloud-shutdown: NNN text`, or on OpenNebula in its USER_TEMPLATE through OneGate
(docs/vm-side.md). What reaches us is written by the VM, so it is read bounded, and only a code
we know with a short printable text is believed; anything else is no message at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CODES = {
    100: "shutdown requested by the host",
    200: "intended work completed",
    300: "no more work",
    400: "banned or disabled",
    500: "site or environment problem",
    600: "grid-wide problem",
    700: "VM or application error",
}
TEXT_LIMIT = 160
CONSOLE_TAIL = 64 * 1024  # as much of a console as EC2 keeps; more is not read
CONSOLE_LINES = 500  # asked of a cloud that serves a console by lines (Nova's `length`): the line is among the last
# The whole line: our tag at its start (after a kernel time stamp, at most), nothing after the text.
LINE = re.compile(rb"^(?:\[[ 0-9.]{1,20}\] )?wlcgcloud-shutdown: ([1-7]00) ([ -~]{1,%d})[ \t\r]*$" % TEXT_LIMIT,
                  re.MULTILINE)  # fmt: skip
CODE_TAG = "wlcg:shutdown-code"
TEXT_TAG = "wlcg:shutdown-message"


@dataclass(frozen=True)
class ShutdownMessage:
    """A VM's own word on why it ended."""

    code: int
    text: str

    @property
    def verdict(self) -> str:
        """What the code means to a maintainer: asked (100), fine (200), no work (300),
        failure (400-699: the site, the grid, a ban), or vm error (700: judged by its lifetime)."""
        if self.code in (100, 200):
            return "asked" if self.code == 100 else "fine"
        if self.code == 300:
            return "no work"
        return "failure" if self.code < 700 else "vm error"

    def __str__(self) -> str:
        return f"{self.code} {self.text}"

    def to_dict(self) -> dict[str, object]:
        """As `fleet show` and `instance show` give it: the code, the VM's text, what the code means."""
        return {"code": self.code, "text": self.text, "meaning": CODES[self.code]}


def from_console(text: str | bytes) -> ShutdownMessage | None:
    """The last shutdown line in (the last 64 KB of) a console log, or None."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    found = LINE.findall(data[-CONSOLE_TAIL:])
    if not found:
        return None
    code, words = found[-1]
    return ShutdownMessage(int(code), words.decode("ascii").strip())


def from_attributes(code: object, text: object) -> ShutdownMessage | None:
    """The message a VM set through OneGate (WLCG_SHUTDOWN_CODE, WLCG_SHUTDOWN_MESSAGE), or None."""
    if not isinstance(code, str) or not re.fullmatch(r"[1-7]00", code.strip(), re.ASCII):
        return None  # written by the VM: "²" is a digit to Python, and no code
    words = text if isinstance(text, str) else ""
    shown = "".join(c if " " <= c <= "~" else "?" for c in words.strip())[:TEXT_LIMIT]
    return ShutdownMessage(int(code), shown or CODES[int(code)])


def parse_stored(code: int | None, text: str | None) -> ShutdownMessage | None:
    """A message as the ledger keeps it (end_code, end_reason)."""
    return ShutdownMessage(code, text or CODES[code]) if code in CODES else None
