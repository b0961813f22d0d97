"""How calls to a cloud wait: a bound on one call, polite retries when the cloud says "not now", console tails.

Plain helpers for the providers, with no SDK and nothing of ours above the basics.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def call_with_timeout(seconds: float, fn: Callable[[], T]) -> T:
    """`fn()`, or TimeoutError after `seconds`; a call still running then is left to its own socket timeout.

    The worker is a daemon thread, so an abandoned call never keeps the command from exiting.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="cloud-call").start()
    if not done.wait(seconds):
        raise TimeoutError(seconds)
    if "error" in box:
        raise box["error"]
    result: T = box["value"]
    return result


THROTTLE_RETRIES = 4
MAX_WAIT = 8.0


def when_throttled(fn: Callable[[], T], throttled: Callable[[Exception], str | None]) -> T:
    """`fn()`, again after a wait each time the cloud answered "not now" (429/503), up to 4 times.

    `throttled(exc)` returns the answer's Retry-After ("" when it gave none) for such an answer,
    None for any other error. The wait honours Retry-After, else full jitter (0.5 s doubling),
    capped at 8 s. Only for calls the SDK does not retry itself; `Provider.call` bounds the whole.
    """
    for attempt in range(THROTTLE_RETRIES + 1):
        try:
            return fn()
        except Exception as exc:
            after = throttled(exc)
            if after is None or attempt == THROTTLE_RETRIES:
                raise
            wait = float(after) if after.isdigit() else random.uniform(0, 0.5 * 2**attempt)
            time.sleep(min(wait, MAX_WAIT))
    raise AssertionError("unreachable")


def tail(text: str, lines: int | None) -> str:
    """The last `lines` lines of a console log (all with None)."""
    if lines is None or lines <= 0:
        return text
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text.endswith("\n") else "")
