"""OpenStack (Keystone v3, Nova, Glance) through openstacksdk.

Imported only when an OpenStack profile is used (openstacksdk costs ~380 ms to import).
keystoneauth retries 429 and 503 answers, honouring Retry-After; it never retries a request
whose connection broke, because a POST /servers that reached Nova must not be sent twice.
Instead, every create carries a `wlcg:request=<token>` server tag, and a create first looks
for servers with that tag, so a retried launch finds what the first attempt made.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import keystoneauth1.exceptions as ksa
import openstack.config
import openstack.connection
import openstack.exceptions as sdk
from openstack.utils import maximum_supported_microversion

from wlcgcloud import __version__
from wlcgcloud.clouds import CLOUDS
from wlcgcloud.errors import AuthError, PolicyError, WlcgError
from wlcgcloud.providers.base import (
    ENDORSED_ID_TAG,
    FLEET_TAG,
    TAG_PREFIX,
    Check,
    E,
    Flavor,
    Image,
    ImageUpload,
    Instance,
    LaunchRequest,
    Made,
    Match,
    Outcome,
    Provider,
    Quota,
    UncertainLaunch,
    UsageRecord,
    aware,
)
from wlcgcloud.providers.nova_answers import checked, json_object
from wlcgcloud.providers.waiting import tail, when_throttled
from wlcgcloud.secretstore import auth_type

T = TypeVar("T")

# Nova server status -> ours (Compute API reference, "Server Status").
STATES = {
    "BUILD": "pending",
    "ACTIVE": "running",
    "REBOOT": "running",
    "HARD_REBOOT": "running",
    "REBUILD": "pending",
    "RESIZE": "running",
    "VERIFY_RESIZE": "running",
    "REVERT_RESIZE": "running",
    "MIGRATING": "running",
    "PASSWORD": "running",
    "RESCUE": "running",
    "PAUSED": "stopped",
    "SUSPENDED": "stopped",
    "SHUTOFF": "stopped",
    "SHELVED": "stopped",
    "SHELVED_OFFLOADED": "stopped",
    "SOFT_DELETED": "terminated",
    "DELETED": "terminated",
    "ERROR": "error",
    "UNKNOWN": "unknown",
}


# Glance pages 25 images by default: ask for 500, so a chunk of fetch_all is one request. Nova
# pages by its own max_limit (1000) with next links; giving openstacksdk a `limit` there makes
# it probe one page further by marker, which it aborts as an "endless pagination loop" when
# servers change meanwhile (seen on the peer while 20 servers were being built).
def _dotted(version: Any) -> str:
    return ".".join(str(int(v)) for v in version)


NEEDED = (2, 47)  # the highest Nova microversion a feature of ours relies on (flavor embedded in servers)
PAGE = 500
LISTING_MICROVERSION = "2.96"  # asked for in server listings (or the cloud's highest, when lower)
STATUS_RETRIES = 4  # 429/503 answers; keystoneauth waits Retry-After, else 0.5 s doubling
USER_DATA_LIMIT = 65535 // 4 * 3  # Nova keeps at most 65535 characters of base64: 49149 bytes
REQUEST_TAG = "wlcg:request"
METHODS = {
    "password": "password",
    "v3applicationcredential": "application credential",
    "v3oidcaccesstoken": "OIDC access token",
}


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def _parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


class OpenStackProvider(Provider):
    kind = CLOUDS["openstack"].title
    user_data_limit = USER_DATA_LIMIT

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.profile
        self.auth_type = auth_type(p)
        auth: dict[str, Any] = {"auth_url": p.get("auth_url")}
        env = os.environ
        named = p.get("username") or p.get("application_credential_id")

        def setting(key: str, variable: str) -> Any:
            # The OS_* environment fills in only for a profile that names no identity of its own.
            return p.get(key) or (None if named else env.get(variable))

        if self.auth_type == "v3applicationcredential":
            auth["application_credential_id"] = setting("application_credential_id", "OS_APPLICATION_CREDENTIAL_ID")
            auth["application_credential_secret"] = self.secret.value
        else:
            if self.auth_type == "password":
                auth["username"] = setting("username", "OS_USERNAME")
                auth["password"] = self.secret.value
                auth["user_domain_name"] = setting("user_domain", "OS_USER_DOMAIN_NAME") or "Default"
            else:  # v3oidcaccesstoken
                auth["identity_provider"] = p.get("identity_provider")
                auth["protocol"] = p.get("protocol") or "openid"
                auth["access_token"] = self.secret.value
            if p.get("project_id"):
                auth["project_id"] = p.get("project_id")
            else:
                auth["project_name"] = setting("project", "OS_PROJECT_NAME")
                auth["project_domain_name"] = setting("project_domain", "OS_PROJECT_DOMAIN_NAME") or "Default"
        region = openstack.config.get_cloud_region(
            load_yaml_config=False,
            load_envvars=False,
            app_name="wlcgcloud",
            app_version=__version__,
            auth_type=self.auth_type,
            auth=auth,
            region_name=p.get("region") or env.get("OS_REGION_NAME"),
            cacert=p.get("ca_bundle"),
            api_timeout=p.timeout,
            connect_retries=0,
            status_code_retries=STATUS_RETRIES,
        )
        self.conn = openstack.connection.Connection(config=region)
        self._logged_in = False

    def login(self) -> None:
        """Get a token first, retrying Keystone's 429/503 answers.

        keystoneauth retries the services' answers (status_code_retries) but not the token
        request itself, so a throttled Keystone would otherwise fail the first call at once.
        """
        if self._logged_in:
            return

        def throttled(exc: Exception) -> str | None:
            if isinstance(exc, ksa.http.TooManyRequests | ksa.http.ServiceUnavailable):
                response = getattr(exc, "response", None)
                return str(response.headers.get("Retry-After") or "") if response is not None else ""
            return None

        # The session's own get_token, not Connection.authorize: that one hides keystoneauth's
        # exceptions (and their HTTP status) inside a generic SDKException.
        token = super().call("authenticate", lambda: when_throttled(self.conn.session.get_token, throttled))
        self.hide(str(token))  # the token stands for the secret until it expires
        self._logged_in = True

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.login()
        return super().call(what, fn, *args, **kwargs)

    @property
    def method(self) -> str:
        return METHODS.get(self.auth_type, self.auth_type)

    # Errors

    def _hide_current_token(self) -> None:
        """keystoneauth logs in again when a token expires (hourly on many clouds): the token in use now is
        kept out of errors too, not only the first one."""
        token = getattr(getattr(self.conn.session.auth, "auth_ref", None), "auth_token", None)
        if isinstance(token, str) and token not in self._hidden:
            self.hide(token)

    def scrubbed(self, error: E) -> E:
        self._hide_current_token()
        return super().scrubbed(error)

    def translate(self, what: str, exc: Exception) -> WlcgError:
        self._hide_current_token()
        status = getattr(exc, "status_code", None) or getattr(exc, "http_status", None)
        if status is None and (tls := self.tls_error(what, exc, str(self.profile.get("auth_url")))):
            return tls  # our connection failed; a cloud's answer (with a status) never counts
        text = str(getattr(exc, "details", None) or getattr(exc, "message", None) or exc).strip()
        if isinstance(exc, ksa.Unauthorized) or status == 401:
            return AuthError(
                f"profile '{self.name}': Keystone refused the {self.method} (HTTP 401).",
                f"Run 'wlcgcloud profile test {self.name}'.",
            )
        if status == 403 and "quota" not in text.lower():
            return AuthError(f"profile '{self.name}': {what}: OpenStack refused it (HTTP 403): {self.detail(text)}")
        if isinstance(exc, json.JSONDecodeError | ksa.InvalidResponse):  # e.g. an HTML page with HTTP 200
            return self.not_the_api(what, f"HTTP {status or 200}, not JSON")
        if isinstance(exc, ksa.ConnectFailure | ksa.ConnectTimeout | ksa.DiscoveryFailure | ksa.UnknownConnectionError):
            return self.unreachable(what, str(self.profile.get("auth_url")), exc)
        if isinstance(exc, ksa.EndpointNotFound | sdk.EndpointNotFound):
            return self.cloud_error(what, f"the catalog has no such service in this region: {text}")
        if status:
            return self.cloud_error(what, f"HTTP {status}: {text}")
        return self.cloud_error(what, f"{type(exc).__name__}: {text}")

    def answered(self, exc: Exception) -> bool:
        return (getattr(exc, "status_code", None) or getattr(exc, "http_status", None)) is not None

    # Reading

    def check(self) -> Check:
        try:
            project = self.call("authenticate", lambda: self.conn.current_project_id)
            self.call("reach Nova", lambda: self.conn.compute.get_limits())
        except WlcgError as exc:
            return Check(False, exc.message, exc.exit_code)
        return Check(
            True,
            f"Keystone accepted the {self.method}; Nova answered for project {project}",
        )

    def images(self) -> list[Image]:
        raws = self.fetch_all("list images", lambda: self.conn.image.images(limit=PAGE))
        return [self._image(i) for i in raws]

    def _image(self, raw: Any) -> Image:
        props = dict(raw.properties or {})
        algo, value = raw.hash_algo, raw.hash_value
        return Image(
            id=raw.id,
            name=raw.name or raw.id,
            profile=self.name,
            provider="openstack",
            size_bytes=raw.size,
            checksum=(algo, value) if algo and value else None,
            endorsed_id=props.get(ENDORSED_ID_TAG),
            extra={
                "status": raw.status,
                "owner": raw.owner_id,
                "visibility": raw.visibility,
                "min_ram": raw.min_ram,
                "min_disk": raw.min_disk,
            },
        )

    def find_endorsed(self, identifier: str, sha512: str) -> list[Match]:
        """Glance keeps each image's sha512 (`os_hash_value`): the bytes themselves are the match."""
        found = []
        for image in self.images():
            if image.checksum == ("sha512", sha512.lower()):
                whose = f"{image.extra.get('visibility')} image of project {image.extra.get('owner')}"
                found.append(
                    Match(image, f"Glance os_hash_value (sha512) equals the list's sl:checksum:sha512 ({whose})")
                )
            elif image.endorsed_id == identifier:
                why = "its sha512 differs" if image.checksum else "Glance holds no sha512 for it"
                found.append(Match(image, f"marked {ENDORSED_ID_TAG} = {identifier}, but {why}", ok=False))
        return found

    def upload_image(self, upload: ImageUpload, advance: Callable[[int], None] | None = None) -> Image:
        """A Glance image from checked bytes; Glance's own sha512 must agree, else it is deleted again."""
        properties: dict[str, Any] = {ENDORSED_ID_TAG: upload.endorsed_id}
        raw = self.call(
            "create image",
            lambda: self.conn.image.create_image(
                name=upload.name, filename=str(upload.path), disk_format=upload.disk_format,
                container_format="bare", wait=True, allow_duplicates=True, **properties,
            ),
        )  # fmt: skip
        if advance:
            advance(upload.path.stat().st_size)
        image = self._image(self.call("show image", lambda: self.conn.image.get_image(raw.id)))
        if image.checksum != ("sha512", upload.sha512.lower()):
            self.call("delete image", lambda: self.conn.image.delete_image(raw.id, ignore_missing=True))
            raise PolicyError(
                f"profile '{self.name}': Glance's sha512 of the upload differs from the list's; deleted it."
            )
        return image

    def flavors(self) -> list[Flavor]:
        raws = self.fetch_all("list flavors", lambda: self.conn.compute.flavors(details=True))
        return [Flavor(name=f.name, id=f.id, vcpus=f.vcpus, memory_mb=f.ram, disk_gb=f.disk) for f in raws]

    def api_version(self) -> tuple[str, str | None]:
        data = self.call("read Nova's API versions", lambda: self.conn.compute.get_endpoint_data())
        low, top = (data.min_microversion, data.max_microversion) if data is not None else (None, None)
        if not top:
            return "Nova API v2.1 without microversions", f"microversion {NEEDED[0]}.{NEEDED[1]} needed"
        shown = f"Nova API v2.1, microversions {_dotted(low or (2, 1))} to {_dotted(top)}"
        if tuple(top) < NEEDED:
            return shown, f"below {_dotted(NEEDED)} (flavors embedded in servers): instances list without vCPUs/memory"
        return shown, None

    def service_url(self) -> str | None:
        url = self.call("find Nova in the catalog", lambda: self.conn.compute.get_endpoint())
        return str(url) if url else None

    def key_pairs(self) -> list[str] | None:
        return [k.name for k in self.fetch_all("list key pairs", lambda: self.conn.compute.keypairs())]

    def networks(self) -> list[tuple[str, str]]:
        raws = self.fetch_all("list networks", lambda: self.conn.network.networks())
        return [(n.id, n.name or "") for n in raws]

    def quota(self) -> Quota:
        limits = self.call("read limits", lambda: self.conn.compute.get_limits()).absolute

        def limit(value: int | None) -> int | None:
            return None if value is None or value < 0 else value

        return Quota(
            instances=limit(limits.instances),
            instances_used=limits.instances_used,
            cores=limit(limits.total_cores),
            cores_used=limits.total_cores_used,
            memory_mb=limit(limits.total_ram),
            memory_mb_used=limits.total_ram_used,
        )

    def instances(self, fleet: str | None = None, everything: bool = False) -> list[Instance]:
        # Listed in full and filtered here: a server that carries our metadata without the
        # mirrored tags (made by another tool) must still be found.
        found = [self._instance(r) for r in self._servers("list servers")]
        if fleet:
            return [i for i in found if i.fleet == fleet]
        return found if everything else [i for i in found if i.fleet]

    def instance(self, instance_id: str) -> Instance | None:
        try:
            raw = self.call("show server", lambda: self.conn.compute.find_server(instance_id, ignore_missing=False))
        except WlcgError as exc:
            if isinstance(exc.__cause__, sdk.NotFoundException):
                return None
            raise
        try:  # found by id or name: now Nova's own JSON of it
            [server] = self._servers("show server", f"/servers/{raw.id}")
        except WlcgError as exc:
            if isinstance(exc.__cause__, sdk.NotFoundException):
                return None  # deleted in between
            raise
        return self._instance(server)

    def _servers(self, what: str, url: str = "/servers/detail", **query: str) -> list[dict[str, Any]]:
        """Servers as Nova's JSON, page by page (`servers_links`), or the one server of `url`.

        Read as JSON, not as openstacksdk resources: building a resource costs ~3 ms a server, so a
        listing of 2,000 took 6-8 s; parsing the same pages takes a few hundredths of a second.
        """
        version = self.call("read Nova's API versions", lambda: maximum_supported_microversion(
            self.conn.compute, LISTING_MICROVERSION))  # fmt: skip
        listing = url.endswith("/detail")
        out: list[dict[str, Any]] = []
        params: dict[str, str] = dict(query)
        for _ in range(100_000):  # a bound: pages of at least one server each
            body = self.call(what, lambda q=params: json_object(
                checked(self.conn.compute.get(url, params=q or None, microversion=version)), listing))  # fmt: skip
            if not listing:
                return [body["server"]]
            out += body["servers"]
            after = next((link.get("href") for link in body.get("servers_links") or []
                          if isinstance(link, dict) and link.get("rel") == "next"), None)  # fmt: skip
            if not isinstance(after, str) or not body["servers"]:
                return out
            # Only the next link's query (its marker) is taken: the token goes to the catalog's Nova, never
            # to wherever a link points. A link that leads back to a page already read ends the listing.
            following = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(after).query))
            if following == params:
                return out
            params = following
        return out

    def _instance(self, raw: Mapping[str, Any]) -> Instance:
        """One server of Nova's JSON (GET /servers/detail, /servers/ID) as ours."""
        status = str(raw.get("status") or "UNKNOWN").upper()
        task = raw.get("OS-EXT-STS:task_state")
        state = STATES.get(status, "unknown")
        if task == "deleting":
            state = "stopping"
        flavor = _table(raw, "flavor")  # embedded since microversion 2.47
        networks = _table(raw, "addresses")
        addresses = [a["addr"] for net in networks.values() if isinstance(net, list)
                     for a in net if isinstance(a, dict) and a.get("addr")]  # fmt: skip
        metadata = _table(raw, "metadata")
        image = raw.get("image")  # a server booted from a volume has image ""
        fault = _table(raw, "fault")
        return Instance(
            id=str(raw["id"]),
            name=str(raw.get("name") or raw["id"]),
            profile=self.name,
            provider="openstack",
            state=state,
            provider_state=status + (f"/{task}" if task else ""),
            flavor=flavor.get("original_name") or flavor.get("name"),
            vcpus=flavor.get("vcpus"),
            memory_mb=flavor.get("ram"),
            image=(image.get("id") if isinstance(image, dict) else None) or None,
            launched_at=_parse_time(raw.get("OS-SRV-USG:launched_at")) or _parse_time(raw.get("created")),
            addresses=tuple(addresses),
            tags={str(k): str(v) for k, v in metadata.items() if str(k).startswith(TAG_PREFIX)},
            extra={"fault": fault.get("message"), "availability_zone": raw.get("OS-EXT-AZ:availability_zone")},
        )

    def console_log(self, instance_id: str, lines: int | None = None) -> str:
        reply = self.call(
            "read console log", lambda: self.conn.compute.get_server_console_output(instance_id, length=lines)
        )
        return tail(str(reply.get("output") or ""), lines)

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> list[Outcome]:
        outcomes = []
        for one in instance_ids:  # POST /servers/{id}/metadata adds and changes keys, keeps the others
            try:
                self.call("set server metadata", lambda i=one: checked(self.conn.compute.post(
                    f"/servers/{i}/metadata", json={"metadata": dict(tags)})))  # fmt: skip
                outcomes.append(Outcome(one))
            except WlcgError as exc:
                outcomes.append(Outcome.failed(one, exc))
        return outcomes

    def usage(self, since: datetime, until: datetime) -> list[UsageRecord]:
        since, until = aware(since), aware(until)
        project = str(self.call("authenticate", lambda: self.conn.current_project_id))
        records: list[UsageRecord] = []
        seen: set[str] = set()
        marker: str | None = None
        while True:  # os-simple-tenant-usage pages with limit/marker from microversion 2.40
            query: dict[str, Any] = {"limit": 1000}
            if marker:
                query["marker"] = marker
            page = self.call(
                "read usage",
                lambda q=query: self.conn.compute.get_usage(project, _naive_utc(since), _naive_utc(until), **q),
            )
            # Page until an empty page (Nova's max_limit may be below ours); a Nova older than 2.40
            # ignores the marker and repeats itself, which ends the loop too.
            servers = [s for s in page.server_usages or [] if s.instance_id not in seen]
            for s in servers:
                seen.add(s.instance_id)
                records.append(
                    UsageRecord(
                        instance_id=s.instance_id,
                        name=s.name or s.instance_id,
                        profile=self.name,
                        provider="openstack",
                        started_at=_parse_time(s.started_at) or since,
                        ended_at=_parse_time(s.ended_at),
                        flavor=s.flavor,
                        vcpus=s.vcpus,
                        memory_mb=s.memory_mb,
                    )
                )
            if not servers:
                return records
            marker = servers[-1].instance_id

    # Changing

    def _by_request(self, token: str) -> list[dict[str, Any]]:
        return self._servers("look for an earlier attempt", tags=f"{REQUEST_TAG}={token}")

    def create(self, request: LaunchRequest, made: Made | None = None) -> list[Instance]:
        self.check_request(request)
        tell = made or (lambda _: None)
        earlier = self._by_request(request.token)
        if earlier:
            found = [self._instance(r) for r in earlier]
            tell(found)
            return found
        p = self.profile
        metadata = {k: v[:255] for k, v in request.tags.items()}
        metadata[REQUEST_TAG] = request.token
        tags = [f"{k}={v}"[:60] for k, v in (("wlcg:fleet", request.tags.get(FLEET_TAG)),) if v]
        tags.append(f"{REQUEST_TAG}={request.token}")
        flavor = self.call("find flavor", lambda: self.conn.compute.find_flavor(request.flavor, ignore_missing=False))
        attrs: dict[str, Any] = {
            "name": request.name,
            "image_id": request.image,
            "flavor_id": flavor.id,
            "min_count": request.count,
            "max_count": request.count,
            "metadata": metadata,
            "tags": tags,
        }
        network = request.network or p.get("network")
        if network:
            net = self.call("find network", lambda: self.conn.network.find_network(network, ignore_missing=False))
            attrs["networks"] = [{"uuid": net.id}]
        else:
            attrs["networks"] = "auto"  # required from microversion 2.37
        if p.get("security_groups"):
            attrs["security_groups"] = [{"name": g} for g in p.get("security_groups")]
        key = request.key_name or p.get("key_name")
        if key:
            attrs["key_name"] = key
        if request.user_data:
            attrs["user_data"] = base64.b64encode(request.user_data).decode()  # the SDK wants it encoded
        prefix = f"profile '{self.name}': "
        try:
            first = self.call("create servers", lambda: self.conn.compute.create_server(**attrs))
        except WlcgError as exc:
            # The POST may have reached Nova before the connection broke: adopt what it made.
            try:
                earlier = self._by_request(request.token)
            except WlcgError as missed:
                if not self.may_have_acted(exc):
                    raise exc from exc.__cause__  # Nova answered: nothing was made
                why = f"{exc.message.removeprefix(prefix)}; looking for them: {missed.message.removeprefix(prefix)}"
                raise UncertainLaunch(self.name, request.count, [], request.count, why) from missed
            if earlier:
                found = [self._instance(r) for r in earlier]
                tell(found)
                return found
            raise
        # Nova answers a multi-create with the first server only (all or none are made); the
        # request tag finds them all.
        known = [replace(self._instance({"id": first.id, "name": request.name}), tags=metadata)]
        tell(known)
        try:
            found = [self._instance(r) for r in self._by_request(request.token)]
        except WlcgError as missed:
            why = f"Nova made them; looking for them: {missed.message.removeprefix(prefix)}"
            raise UncertainLaunch(self.name, request.count, known, request.count - 1, why) from missed
        tell(found)
        return found

    def launch_calls(self, request: LaunchRequest) -> list[str]:
        size = f", user_data={4 * ((len(request.user_data) + 2) // 3)} base64 chars" if request.user_data else ""
        return [
            f"GET /servers/detail?tags={REQUEST_TAG}={request.token} (adopt an earlier attempt's servers)",
            f"GET /flavors/detail (find flavor {request.flavor})",
            f"POST /servers (imageRef={request.image}, min_count={request.count}, max_count={request.count}, "
            f"metadata={len(request.tags) + 1} keys, tags=wlcg:fleet+{REQUEST_TAG}{size})",
            f"GET /servers/detail?tags={REQUEST_TAG}={request.token} (the servers made)",
        ]

    def terminate(self, instance_ids: Sequence[str]) -> list[Outcome]:
        outcomes = []
        for one in instance_ids:
            try:
                self.call("delete server", lambda i=one: self.conn.compute.delete_server(i, ignore_missing=False))
                outcomes.append(Outcome(one))
            except WlcgError as exc:
                if isinstance(exc.__cause__, sdk.NotFoundException):
                    outcomes.append(Outcome(one))  # already gone: terminating is done either way
                else:
                    outcomes.append(Outcome.failed(one, exc))
        return outcomes


PROVIDER = OpenStackProvider
