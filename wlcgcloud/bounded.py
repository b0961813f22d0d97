"""Bounds on everything wlcgcloud reads from outside: file sizes, nesting, numbers and dates.

Every bound is named here, in one place. A file (config, image list, user-data, proxy, token,
secret) is read through `read_bytes`, which never reads more than its bound plus one byte, so
`/dev/zero` or a 32 MiB config is refused at once instead of filling memory. Nested text (TOML,
JSON, a `--query`) is measured with `nesting_depth` before a recursive parser sees it, so depth
is refused by a bound of ours rather than by the interpreter's recursion limit.

Callers turn `TooLarge`, `OSError` and a too-deep text into the error class of their input
(config 3, image list, user-data and credentials 5). Cheap to import: the standard library only.
"""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from typing import Any

KiB = 1024
MiB = 1024 * KiB

# File sizes: far above any real file of the kind, far below what hurts.
CONFIG_SIZE = 256 * KiB  # config.toml: a hundred profiles are about 20 KiB; tomlkit rewrites 1 MiB in ~6 s
IMAGE_LIST_SIZE = 16 * MiB  # a signed HEPiX image list is kilobytes
USER_DATA_SIZE = 1 * MiB  # --user-data: more than any cloud accepts (EC2 takes 16 KiB)
PROXY_SIZE = 1 * MiB  # an X.509 proxy with its chain and VOMS attributes is a few KiB
TOKEN_SIZE = 64 * KiB  # a WLCG bearer token (JWT) is one to a few KiB; also $BEARER_TOKEN
SECRET_SIZE = 64 * KiB  # a secret_file
IMPORTED_FILE_SIZE = 1 * MiB  # clouds.yaml, secure.yaml, ~/.aws files, ONE_AUTH: a few KiB
CRL_SIZE = 64 * MiB  # a CA's revocation list in the trust anchors
STATE_FILE_SIZE = 64 * MiB  # our own JSON in the state directory (completion cache, list records)

# Nesting: our documents are a few levels deep (a profile's benchmarks table is 3, an image
# list 5). Recursive parsers (tomllib, json, jmespath) need a few frames per level.
MAX_DEPTH = 32
QUERY_LENGTH = 2048  # --query: characters

# Numbers in the config.
TIMEOUT_MAX = 86400  # `timeout`: seconds per API call
USER_DATA_LIMIT_MAX = 16 * MiB  # OpenNebula `user_data_limit`
SETTING_INT_MAX = 2**31 - 1  # any other whole-number setting: fits XML-RPC's and C's int
BENCHMARK_MAX = 1e6  # an APEL benchmark score per core
SETTING_LENGTH = 4096  # characters of one string setting (PATH_MAX)

# Durations and dates (options, credentials): beyond these, arithmetic overflows or means nothing.
# Plain numbers, not datetimes: completion imports this module, and `datetime` would cost it ~2 ms.
MAX_DURATION_DAYS = 36525  # 100 years
EARLIEST_YEAR = 1970  # from 1 January, UTC
LATEST_YEAR = 2200  # until 1 January, UTC
EARLIEST_EPOCH = 0  # 1970-01-01T00:00:00Z
LATEST_EPOCH = 7258118400  # 2200-01-01T00:00:00Z


class TooLarge(ValueError):
    """A file that holds more than its bound."""

    def __init__(self, path: Path | str, limit: int) -> None:
        super().__init__(f"{path}: more than {size_text(limit)}")
        self.limit = limit


def size_text(size: int) -> str:
    """`16 MiB`, `64 KiB`, `512 bytes`."""
    if size >= MiB and size % MiB == 0:
        return f"{size // MiB} MiB"
    if size >= KiB and size % KiB == 0:
        return f"{size // KiB} KiB"
    return f"{size} bytes"


def read_bytes(path: Path | str, limit: int) -> bytes:
    """The bytes of the file at `path`, at most `limit` of them; TooLarge when it holds more.

    Reads at most `limit + 1` bytes whatever the file is (a regular file, `/dev/zero`, a pipe
    such as `<(...)`), so a bound is never a size taken on trust from `stat`. OSError as `open`
    raises it (missing, a directory, a symlink loop, not readable).
    """
    if "\0" in str(path):
        raise OSError(errno.EINVAL, "a file name cannot hold a NUL byte", str(path))
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise TooLarge(path, limit)
    return data


def read_state_json(path: Path | str, limit: int = STATE_FILE_SIZE) -> Any:
    """JSON that wlcgcloud wrote itself (state directory), bounded in size; ValueError or OSError otherwise.

    Completion reads these on every TAB, so depth is not measured beforehand (a scan of the whole
    cache): a file nested deep enough to exhaust the parser's stack is a ValueError all the same.
    """
    try:
        return json.loads(read_bytes(path, limit))
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None


# Strings (skipped: brackets inside them are not structure), comments, and the characters that
# nest or separate. Unterminated strings run to the end of their line (or of the text), so the
# scan stays linear on any input; a parser stops at such a string anyway.
_STRING = (
    r'"""(?:[^"\\]|\\.|"(?!""))*(?:"{3,5}|\\?\Z)'
    r"|'''.*?(?:'{3,5}|\Z)"
    r'|"(?:[^"\\\n]|\\.)*(?:"|\\?$)'
    r"|'[^'\n]*(?:'|$)"
    r"|#[^\n]*"
)
_NESTING = _STRING + r"|[\[{(\]})]"
_NESTING_DOTTED = _NESTING + r"|\.|[=,:\n]"


def nesting_depth(text: str, *, dotted_keys: bool = False, stop: int = MAX_DEPTH) -> int:
    """How deep `text` (TOML, JSON or a JMESPath expression) nests: brackets, braces, parentheses.

    With `dotted_keys` (TOML), each dot of a dotted key (`a.b.c = 1`, `[a.b.c]`) counts as a
    level too, as it makes one. Counting stops once the depth passes `stop`.
    """
    depth = dots = deepest = 0
    # Compiled on first use (re caches it), not at import: --help and completion import this module.
    tokens = re.compile(_NESTING_DOTTED if dotted_keys else _NESTING, re.DOTALL | re.MULTILINE)
    for match in tokens.finditer(text):
        char = match.group()[0]
        if char in "[{(":
            depth, dots = depth + 1, 0
        elif char in "]})":
            depth, dots = max(0, depth - 1), 0
        elif char == ".":
            dots += 1
        elif char in "=,:\n":
            dots = 0
        else:
            continue  # a string or a comment
        deepest = max(deepest, depth + dots)
        if deepest > stop:
            break
    return deepest


def too_deep(text: str, *, dotted_keys: bool = False, limit: int = MAX_DEPTH) -> bool:
    """Whether `text` nests deeper than `limit` (see `nesting_depth`)."""
    return nesting_depth(text, dotted_keys=dotted_keys, stop=limit) > limit
