"""Nova's raw answers, checked before we believe them: an HTTP status, a JSON page bounded in size and depth.

The OpenStack provider reads server listings as Nova's JSON (not openstacksdk's objects); these
are the checks each answer passes first.
"""

from __future__ import annotations

import json
from typing import Any

import openstack.exceptions as sdk

from wlcgcloud.bounded import size_text, too_deep
from wlcgcloud.providers.answers import NotTheApi

PAGE_BYTES = 64 * 2**20  # one page of /servers/detail: Nova sends at most its max_limit (1000) servers, ~1 MB


def checked(response: Any) -> bytes:
    """The body of a raw SDK answer, or the SDK's own exception for its HTTP status (the proxies' raw
    calls do not raise): a 403 stays AuthError, a 503 says so, a 404 is NotFoundException."""
    if response.status_code >= 400:
        sdk.raise_from_response(response)
    return bytes(response.content)


def json_object(content: bytes, listing: bool) -> dict[str, Any]:
    """A page of Nova's servers (`listing`), or one server, as JSON bounded in size and depth; NotTheApi
    for anything else (an HTML page, an empty body, another shape)."""
    key = "servers" if listing else "server"
    if len(content) > PAGE_BYTES:
        raise NotTheApi(f"a page of {size_text(len(content))}, more than Nova sends")
    text = content.decode("utf-8", "replace")
    if too_deep(text):
        raise NotTheApi("JSON nested too deep")
    try:
        body = json.loads(text)
    except json.JSONDecodeError:
        raise NotTheApi("not JSON") from None
    wanted = list if key == "servers" else dict
    if not isinstance(body, dict) or not isinstance(body.get(key), wanted):
        raise NotTheApi(f"JSON without '{key}'")
    if key == "servers" and not all(isinstance(s, dict) and s.get("id") for s in body[key]):
        raise NotTheApi("a server without an id")
    return body
