"""What a cloud answered, made fit for our messages: secrets scrubbed, one line, bounded; an answer
that is not the API's told apart from an empty one; why a connection was never made.

Used by every provider (through providers/base.py's Provider.call) and by nothing else.
"""

from __future__ import annotations

import html
import json
import re
import socket
import ssl
import urllib.parse
from collections.abc import Iterable, Iterator

_ECHOED_VALUE = re.compile(r"(?i)(\b(?:value|user_data|userdata)\b\"?\s*[:=]\s*)[^\n]*")
_LONG_BASE64 = re.compile(r"[A-Za-z0-9+/=_-]{64,}")
MAX_DETAIL = 300
SHORTEST_SECRET = 6  # shorter ones would blank out ordinary words
USER_DATA_LINE = 16  # user-data lines this long or longer are kept out of errors (a token, a PEM line)


def _quoted_forms(secret: str) -> set[str]:
    """A secret as an answer may quote it back: as it is, JSON-escaped, URL-encoded, XML-escaped."""
    return {secret, json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret),
            html.escape(secret, quote=False), html.escape(secret)}  # fmt: skip


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without any of `secrets` (in every form an answer may quote them), echoed input or long base64.

    The one filter every cloud error passes before it is shown, logged or recorded in the ledger.
    """
    forms = {form for secret in secrets if len(secret) >= SHORTEST_SECRET for form in _quoted_forms(secret)}
    for form in sorted(forms, key=len, reverse=True):  # a session string before the password inside it
        text = text.replace(form, "(secret)")
    text = _ECHOED_VALUE.sub(r"\1(not shown)", text)
    return _LONG_BASE64.sub("(…)", text)


def clean(text: str, secrets: Iterable[str] = ()) -> str:
    """A cloud's error text fit for a one-line message: scrubbed, one line, bounded."""
    text = " ".join(scrub(str(text), secrets).split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 1] + "…"


class NotTheApi(Exception):
    """An answer that is not the cloud API's: an HTML page, an empty body, another root element.

    The providers' transports raise it where an SDK would take such an answer for an empty
    result; `Provider.call` makes it exit 6 naming the profile.
    """


_ROOT = re.compile(rb"\s*(?:<\?xml[^>]*\?>\s*)?<(?:[\w.-]+:)?([\w.-]+)")


def check_root(body: bytes, due: str, status: int, kind: str | None) -> None:
    """NotTheApi unless `body` is XML whose root element is `due` (a namespace prefix aside).

    `status` and `kind` (the Content-Type) only describe the answer in the message.
    """
    found = _ROOT.match(body)
    root = found[1].decode(errors="replace") if found else None
    if root != due:
        what = f"<{root}>" if root else "no XML" if body.strip() else "an empty body"
        raise NotTheApi(f"HTTP {status}, {kind or 'no content type'}, {what} where <{due}> was due")


def causes(exc: BaseException, most: int = 12) -> Iterator[BaseException]:
    """`exc` and what lies behind it, as the SDKs wrap them: __cause__, __context__, an exception
    as first argument, urllib3's `reason`; at most `most` deep."""
    seen: BaseException | None = exc
    for _ in range(most):
        if seen is None:
            return
        yield seen
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        reason = getattr(seen, "reason", None)  # urllib3's MaxRetryError
        seen = seen.__cause__ or seen.__context__ or inner or (reason if isinstance(reason, BaseException) else None)


def sent(exc: BaseException) -> bool:
    """Whether a request that failed with `exc` may have reached the cloud.

    False only when the connection was never made: refused, name not resolved, connect timed
    out, TLS handshake failed, found anywhere in the exception's chain (the SDKs wrap them).
    """
    import urllib3.exceptions  # only on a failure: a dependency of every SDK here, never imported at start-up

    never = (urllib3.exceptions.ConnectTimeoutError, ConnectionRefusedError, socket.gaierror, ssl.SSLError)
    return not any(isinstance(seen, never) for seen in causes(exc))


def why_unreachable(exc: BaseException) -> str:
    """In a few words, why a connection was never made, from the first cause the SDKs' wrapping still shows."""
    import urllib3.exceptions

    chain = list(causes(exc))
    # The deepest cause speaks first: urllib3's NewConnectionError is a ConnectTimeoutError too.
    for seen in reversed(chain):
        if isinstance(seen, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused (nothing listens there)"
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the TLS certificate does not verify ({seen.verify_message})"
        if isinstance(seen, ssl.SSLError):
            return "the TLS handshake failed"
        if isinstance(seen, urllib3.exceptions.ConnectTimeoutError | TimeoutError):
            return "no connection within the timeout"
    return type(exc).__name__
