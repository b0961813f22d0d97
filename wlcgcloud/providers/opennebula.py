"""OpenNebula over its XML-RPC API, through pyone.

Imported only when an OpenNebula profile is used. Facts we rely on (OpenNebula 7.0 API):
- one instantiate per VM (`one.template.instantiate`), run with bounded parallelism; our tags
  go in the same call as USER_TEMPLATE attributes (`WLCG_FLEET=...`: attributes OpenNebula does
  not know land there), so a VM never exists without them;
- an attribute of the extra template replaces the template's attribute of that name whole, so
  the user-data is added to a copy of the template's own CONTEXT, never sent alone;
- pools page as LIMIT start,-end when end < -1, newest first;
- the search argument of `one.vmpool.infoextended` matches "contains": the fleet is re-checked;
- quota excess is refused as AUTHORIZATION (0x200), which is not a credential problem.
pyone posts with requests and no timeout; its `timeout` sets only the process-wide socket
default, which requests ignores. Each client gets a transport with the profile's timeout.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import time
import xml.parsers.expat
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pyone
import requests

from wlcgcloud.clouds import CLOUDS, CONSOLE_LOG
from wlcgcloud.errors import AuthError, UsageError, WlcgError
from wlcgcloud.providers.answers import NotTheApi, check_root
from wlcgcloud.providers.base import (
    ENDORSED_ID_TAG,
    FLEET_TAG,
    TAG_KEYS,
    Check,
    Flavor,
    Image,
    ImageUpload,
    Instance,
    LaunchRequest,
    Made,
    Outcome,
    PartialLaunch,
    Provider,
    Quota,
    UncertainLaunch,
    UsageRecord,
    aware,
    one_attribute,
)
from wlcgcloud.providers.opennebula_template import as_list, int_or_none, quoted, vcpus_of, vector, vm_state
from wlcgcloud.providers.waiting import when_throttled
from wlcgcloud.shutdown import CODE_TAG, TEXT_TAG, ShutdownMessage, from_attributes

OWN_AND_GROUP = -1  # pool filter: the user's own objects and those of their group
ALL_VISIBLE = -2  # pool filter: everything the user may use (shared templates and images)
ANY_BUT_DONE = -1  # VM pool state filter
PAGE = 500
OVERLAP = 50  # pages overlap: a VM that finishes during a listing shifts the newest-first offsets
KEPT_DISK_SETTINGS = ("DEV_PREFIX", "TARGET", "CACHE", "IO", "DISCARD")
PARALLEL_CALLS = 8  # instantiate and terminate calls in flight at once, per profile
DEFAULT_USER_DATA_LIMIT = 65536
DEFAULT_IMAGE_DATASTORE = 1  # "default", the image datastore of a fresh installation
IMAGE_READY, IMAGE_ERROR = 1, 5  # Image::ImageState
REGISTER_TIMEOUT = 3600  # seconds for the datastore to fetch and copy an image
REGISTER_POLL = 2.0
ATTRIBUTES = {one_attribute(tag): tag for tag in TAG_KEYS}
NOT_PROCESSED = (429, 503)  # HTTP answers that say the call was not carried out (retried by `rpc`)
# pyone's objects form cycles and keep their lxml node (for errors' line numbers): a page's XML stayed till gc ran
pyone.bindings.supbind.SaveElementTreeNode = False


class _TimedTransport(pyone.server_xrpc.RequestsTransport):  # type: ignore[misc]
    """pyone's requests-based XML-RPC transport: a timeout on connect and on every read; oned's answers only."""

    def __init__(self, timeout: float, verify: str | bool, endpoint: str) -> None:
        super().__init__()
        self.timeout = timeout
        self.set_https(endpoint.startswith("https"))
        self.set_https_verify(verify)

    def request(self, host: str, handler: str, request_body: bytes, verbose: bool = False) -> Any:
        url = self._build_url(host, handler)
        resp = requests.post(
            url, data=request_body, headers=self.headers, verify=self.https_verify, timeout=self.timeout
        )
        if resp.status_code >= 400:
            raise xmlrpc.client.ProtocolError(url, resp.status_code, resp.reason, dict(resp.headers))
        return self.parse_response(resp)

    def parse_response(self, response: requests.Response) -> Any:
        """The parsed answer, if it is oned's: a methodResponse holding [ok, value-or-message, code, ...].

        Anything else (an HTML page, an empty body, other XML) would otherwise surface as an odd
        Python error inside pyone, or as an answer it misreads.
        """
        kind = response.headers.get("Content-Type")
        check_root(response.content, "methodResponse", response.status_code, kind)
        try:
            answer = super().parse_response(response)
        except (xml.parsers.expat.ExpatError, xmlrpc.client.ResponseError) as exc:
            raise NotTheApi(f"HTTP {response.status_code}, {kind}, XML-RPC that does not parse") from exc
        value = answer[0] if isinstance(answer, tuple) and answer else None
        if not (isinstance(value, list) and len(value) >= 3 and isinstance(value[0], bool)):
            raise NotTheApi(f"HTTP {response.status_code}, a methodResponse that is not [ok, value, code]")
        return answer


class OpenNebulaProvider(Provider):
    kind = CLOUDS["opennebula"].title

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        p = self.profile
        self.user_data_limit = int(p.get("user_data_limit") or DEFAULT_USER_DATA_LIMIT)
        user = p.get("username") or self.secret.username
        session = f"{user}:{self.secret.value}" if user else self.secret.value
        ca = p.get("ca_bundle")
        self.one = pyone.OneServer(p.get("endpoint"), session=session, timeout=None, https_verify=ca or True)
        # pyone posts with requests and no timeout (its `timeout` only sets the process-wide
        # socket default, which requests ignores): give this client a transport with the
        # profile's own, so a stalled oned never holds a thread for good. A second longer than the
        # call's deadline (`Provider.call`): the deadline is what a user is told of, and with equal
        # times the socket's ReadTimeout won the race now and then on a loaded machine.
        self.one._ServerProxy__transport = _TimedTransport(p.timeout + 1, ca or True, str(p.get("endpoint")))
        self.hide(session)  # an answer may quote the request, whose first argument is the session
        self._templates: dict[str, Any] | None = None
        self._me: str | None = None

    # Errors and calls

    def translate(self, what: str, exc: Exception) -> WlcgError:
        text = str(exc)
        if not isinstance(exc, pyone.OneException | xmlrpc.client.ProtocolError) and (
            tls := self.tls_error(what, exc, str(self.profile.get("endpoint")))
        ):
            return tls  # our connection failed, not oned's answer
        if isinstance(exc, pyone.OneAuthenticationException):
            return AuthError(
                f"profile '{self.name}': OpenNebula refused the login (AUTHENTICATION, 0x100).",
                f"Check the user name and password; run 'wlcgcloud profile test {self.name}'.",
            )
        if isinstance(exc, pyone.OneAuthorizationException):
            if "limit of" in text and "quota" in text.lower():
                return self.cloud_error(what, f"over quota: {text}", "See 'wlcgcloud instance list' or ask for more.")
            return AuthError(
                f"profile '{self.name}': {what}: OpenNebula refused it (AUTHORIZATION, 0x200): {self.detail(text)}"
            )
        if isinstance(exc, pyone.OneNoExistsException):
            return self.cloud_error(what, f"not found (NO_EXISTS, 0x400): {text}")
        if isinstance(exc, pyone.OneException):
            return self.cloud_error(what, f"OpenNebula said: {text}")
        if isinstance(exc, xmlrpc.client.ProtocolError):
            return self.cloud_error(what, f"HTTP {exc.errcode} from {self.profile.get('endpoint')}")
        if isinstance(exc, requests.RequestException | OSError):
            return self.unreachable(what, str(self.profile.get("endpoint")), exc)
        return self.cloud_error(what, f"{type(exc).__name__}: {text}")

    def answered(self, exc: Exception) -> bool:
        # oned answers every failure in-band; an HTTP error comes from in front of it, and only
        # 429/503 say the call was not passed on.
        if isinstance(exc, xmlrpc.client.ProtocolError):
            return exc.errcode < 500 or exc.errcode in NOT_PROCESSED
        return isinstance(exc, pyone.OneException)

    def rpc(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """One XML-RPC call within the profile's timeout; 429/503 answers are retried with full jitter.

        Only answers that say the request was not processed are retried: oned applies a call
        before it answers, so a broken connection is never resent blindly.
        """

        def throttled(exc: Exception) -> str | None:
            if isinstance(exc, xmlrpc.client.ProtocolError) and exc.errcode in NOT_PROCESSED:
                return str((exc.headers or {}).get("Retry-After") or "")
            return None

        def attempt() -> Any:
            return when_throttled(lambda: fn(*args), throttled)

        return self.call(what, attempt)

    # Reading

    def check(self) -> Check:
        try:
            user = self.rpc("log in", self.one.user.info, -1)
        except WlcgError as exc:
            return Check(False, exc.message, exc.exit_code)
        return Check(True, f"OpenNebula accepted user {user.NAME} (id {user.ID}, group {user.GNAME})")

    def templates(self) -> dict[str, Any]:
        """VM templates the user may instantiate, by name (and by id as a string)."""
        if self._templates is None:
            pool = self.rpc("list templates", self.one.templatepool.info, ALL_VISIBLE, -1, -1)
            found: dict[str, Any] = {}
            for t in pool.VMTEMPLATE or []:
                found[str(t.ID)] = t
                found.setdefault(t.NAME, t)
            self._templates = found
        return self._templates

    def flavors(self) -> list[Flavor]:
        unique = {t.ID: t for t in self.templates().values()}
        return [self._flavor(t) for t in sorted(unique.values(), key=lambda t: t.NAME)]

    def _flavor(self, t: Any) -> Flavor:
        body = t.TEMPLATE or {}
        disk = sum(int_or_none(d.get("SIZE")) or 0 for d in as_list(body.get("DISK")))
        return Flavor(
            name=t.NAME,
            id=str(t.ID),
            vcpus=vcpus_of(body),
            memory_mb=int_or_none(body.get("MEMORY")),
            disk_gb=disk // 1024 if disk else None,
            extra={"cpu": body.get("CPU")},
        )

    def images(self) -> list[Image]:
        pool = self.rpc("list images", self.one.imagepool.info, ALL_VISIBLE, -1, -1)
        return [self._image(im) for im in pool.IMAGE or []]

    def _image(self, im: Any) -> Image:
        attrs = dict(im.TEMPLATE or {})
        return Image(
            id=str(im.ID),
            name=im.NAME,
            profile=self.name,
            provider="opennebula",
            size_bytes=(int_or_none(im.SIZE) or 0) * 1024 * 1024 or None,
            endorsed_id=attrs.get(one_attribute(ENDORSED_ID_TAG)),
            extra={"owner": im.UNAME, "group": im.GNAME, "state": im.STATE},
        )

    def upload_image(self, upload: ImageUpload, advance: Callable[[int], None] | None = None) -> Image:
        """An OpenNebula image that oned fetches itself from the list's hv:uri (PATH), held to our bytes.

        XML-RPC carries no image data, so the datastore downloads it; the template's MD5 and SHA1,
        computed here from the file whose sha512 we checked, make the datastore refuse any other
        bytes. An image that ends in ERROR is deleted again.
        """
        md5, sha1 = hashlib.md5(usedforsecurity=False), hashlib.sha1(usedforsecurity=False)
        with upload.path.open("rb") as f:
            while chunk := f.read(1 << 20):
                md5.update(chunk)
                sha1.update(chunk)
        attrs = {
            "NAME": upload.name,
            "PATH": upload.uri,
            "TYPE": "OS",
            "MD5": md5.hexdigest(),
            "SHA1": sha1.hexdigest(),
            "DESCRIPTION": f"endorsed image {upload.endorsed_id}",
            one_attribute(ENDORSED_ID_TAG): upload.endorsed_id,
        }
        if upload.disk_format in ("raw", "qcow2"):
            attrs["FORMAT"] = upload.disk_format
        template = "\n".join(f"{k}={quoted(v, k)}" for k, v in attrs.items())
        datastore = int(self.profile.get("image_datastore") or DEFAULT_IMAGE_DATASTORE)
        image_id = int(self.rpc("create image", self.one.image.allocate, template, datastore, True))
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while True:
            im = self.rpc("show image", self.one.image.info, image_id, False)
            state = int(im.STATE)
            if state == IMAGE_READY:
                if advance:
                    advance(upload.path.stat().st_size)
                return self._image(im)
            if state == IMAGE_ERROR or time.monotonic() > deadline:
                why = str(dict(im.TEMPLATE or {}).get("ERROR") or f"still not ready after {REGISTER_TIMEOUT} s")
                with contextlib.suppress(WlcgError):
                    self.rpc("delete image", self.one.image.delete, image_id, False)
                raise self.cloud_error("create image", f"the datastore could not make image {image_id}: {why}; "
                                       "deleted it")  # fmt: skip
            time.sleep(REGISTER_POLL)

    def trusted_owner(self, image: Image) -> str | None:
        """Marks count on the user's own images only: any member of a group could plant one there."""
        if self._me is None:
            self._me = str(self.rpc("log in", self.one.user.info, -1).NAME)
        return f"user {self._me}" if image.extra.get("owner") == self._me else None

    def quota(self) -> Quota:
        user = self.rpc("read quotas", self.one.user.info, -1)
        mine = _first(user.VM_QUOTA)
        default = _first(user.DEFAULT_USER_QUOTAS.VM_QUOTA if user.DEFAULT_USER_QUOTAS else None)

        def limit(key: str) -> int | None:
            value = int_or_none(getattr(mine, key, None)) if mine is not None else -1
            if value == -1 or value is None:  # -1: the default quota applies
                value = int_or_none(getattr(default, key, None)) if default is not None else None
            return None if value is None or value < 0 else value  # -2: unlimited

        def used(key: str) -> int | None:
            return int_or_none(getattr(mine, key + "_USED", None)) if mine is not None else 0

        return Quota(
            instances=limit("VMS"),
            instances_used=used("VMS"),
            cores=limit("CPU"),
            cores_used=used("CPU"),
            memory_mb=limit("MEMORY"),
            memory_mb_used=used("MEMORY"),
        )

    def api_version(self) -> tuple[str, str | None]:
        version = str(self.rpc("read the version", self.one.system.version))
        major = int(version.split(".")[0]) if version.split(".")[0].isdigit() else 0
        warning = "older than 6.0, which brought one.vmpool.infoextended (listings)" if major < 6 else None
        return f"OpenNebula {version}", warning

    def key_pairs(self) -> list[str] | None:
        return None  # SSH keys live in the user's template (SSH_PUBLIC_KEY), not in key pairs

    def networks(self) -> list[tuple[str, str]]:
        pool = self.rpc("list virtual networks", self.one.vnpool.info, ALL_VISIBLE, -1, -1)
        return [(str(n.ID), str(n.NAME)) for n in pool.VNET or []]

    def _pool(self, search: str | None, flavors: bool = False) -> list[Instance]:
        """The VMs, each page made Instances as it comes: pyone keeps a page's whole XML tree while one
        of its objects lives (`flavors`: the templates are read after the first page, to name them)."""
        found: dict[int, Instance] = {}
        start = 0
        while True:  # LIMIT start,PAGE: end < -1 means "page size -end from offset start"
            args: list[Any] = [OWN_AND_GROUP, start, -PAGE, ANY_BUT_DONE, *([search] if search else [])]
            got = list(self.rpc("list VMs", self.one.vmpool.infoextended, *args).VM or [])
            if flavors and not start:
                with contextlib.suppress(WlcgError):
                    self.templates()  # names the flavor of each VM; without it the template id stands in
            # Pages are offsets over a newest-first list: a VM made meanwhile shifts them down (one
            # VM comes twice), one finished shifts them up (the overlap keeps the VM that would have
            # slipped between two pages).
            found.update((int(vm.ID), self._instance(vm)) for vm in got)
            if len(got) < PAGE:
                return list(found.values())
            start += PAGE - OVERLAP

    def instances(self, fleet: str | None = None, everything: bool = False) -> list[Instance]:
        attr = one_attribute(FLEET_TAG)
        found = self._pool(f"VM.USER_TEMPLATE.{attr}={fleet}" if fleet else None, flavors=True)
        if fleet:
            return [i for i in found if i.fleet == fleet]  # the search matches "contains"
        return found if everything else [i for i in found if i.fleet]

    def instance(self, instance_id: str) -> Instance | None:
        if not instance_id.isdigit():
            return None
        try:
            vm = self.rpc("show VM", self.one.vm.info, int(instance_id))
        except WlcgError as exc:
            if isinstance(exc.__cause__, pyone.OneNoExistsException):
                return None
            raise
        return self._instance(vm)

    def _instance(self, vm: Any) -> Instance:
        body = vm.TEMPLATE or {}
        user = dict(vm.USER_TEMPLATE or {})
        state, words = vm_state(int(vm.STATE), int(vm.LCM_STATE))
        templates = self._templates or {}
        template = templates.get(str(body.get("TEMPLATE_ID")))
        disks = as_list(body.get("DISK"))
        return Instance(
            id=str(vm.ID),
            name=vm.NAME,
            profile=self.name,
            provider="opennebula",
            state=state,
            provider_state=words,
            flavor=template.NAME if template is not None else body.get("TEMPLATE_ID"),
            vcpus=vcpus_of(body),
            memory_mb=int_or_none(body.get("MEMORY")),
            image=disks[0].get("IMAGE_ID") if disks else None,
            launched_at=datetime.fromtimestamp(int(vm.STIME), UTC) if vm.STIME else None,
            addresses=tuple(n["IP"] for n in as_list(body.get("NIC")) if n.get("IP")),
            tags={ATTRIBUTES[k]: str(v) for k, v in user.items() if k in ATTRIBUTES},
            extra={
                "owner": vm.UNAME,
                "group": vm.GNAME,
                "image_name": disks[0].get("IMAGE") if disks else None,
                "error": user.get("ERROR"),
            },
        )

    def console_log(self, instance_id: str, lines: int | None = None) -> str:
        raise UsageError(
            f"profile '{self.name}': {CLOUDS['opennebula'].cannot[CONSOLE_LOG]}.",
            "Use the VNC console in Sunstone, or read the VM's log on its host (/var/log/one/<id>.log).",
        )

    def usage(self, since: datetime, until: datetime) -> list[UsageRecord]:
        since, until = aware(since), aware(until)
        history = self.rpc(
            "read accounting",
            self.one.vmpool.accounting,
            OWN_AND_GROUP,
            int(since.timestamp()),
            int(until.timestamp()),
        )
        records = []
        for h in history.HISTORY or []:
            vm = h.VM
            body = (vm.TEMPLATE if vm is not None else None) or {}
            user = dict((vm.USER_TEMPLATE if vm is not None else None) or {})
            disks = as_list(body.get("DISK"))
            records.append(
                UsageRecord(
                    instance_id=str(h.OID),
                    name=vm.NAME if vm is not None else str(h.OID),
                    profile=self.name,
                    provider="opennebula",
                    started_at=datetime.fromtimestamp(int(h.STIME), UTC),
                    ended_at=datetime.fromtimestamp(int(h.ETIME), UTC) if int(h.ETIME) else None,
                    vcpus=vcpus_of(body),
                    memory_mb=int_or_none(body.get("MEMORY")),
                    image=(disks[0].get("IMAGE_ID") if disks else None),
                    tags={ATTRIBUTES[k]: str(v) for k, v in user.items() if k in ATTRIBUTES},
                )
            )
        return records

    # Changing

    def create(self, request: LaunchRequest, made: Made | None = None) -> list[Instance]:
        self.check_request(request)
        name = request.flavor or self.profile.get("vm_template")
        if not name:
            raise UsageError(
                f"profile '{self.name}': no VM template to instantiate.",
                f"Pass --flavor TEMPLATE or set vm_template with 'wlcgcloud profile edit {self.name}'.",
            )
        template = self.templates().get(str(name))
        if template is None:
            known = ", ".join(sorted({t.NAME for t in self.templates().values()})) or "none"
            raise UsageError(f"profile '{self.name}': no VM template '{name}' (templates: {known}).")
        extra = self._extra_template(request, template)
        wanted = [f"{request.name}-{n}" for n in range(request.first, request.first + request.count)]
        tell = made or (lambda _: None)
        done = {i.name: i for i in self._made_by(request.token)}  # a retry adopts what exists
        tell(list(done.values()))

        def make(vm_name: str) -> Instance:
            vm_id = int(self.rpc(
                "instantiate", self.one.template.instantiate, int(template.ID), vm_name, False, extra, False
            ))  # fmt: skip
            known = self._just_made(vm_id, vm_name, template, request)
            tell([known])  # its id is known: recorded before anything else can fail
            with contextlib.suppress(WlcgError):  # a VM that cannot be read back yet still exists
                known = self._instance(self.rpc("show VM", self.one.vm.info, vm_id))
            return known

        missing = [n for n in wanted if n not in done]
        prefix = f"profile '{self.name}': "
        errors: list[str] = []
        first_error: WlcgError | None = None
        lost: list[str] = []  # why calls failed that may still have made their VM (no answer said not)
        if missing:
            with ThreadPoolExecutor(max_workers=min(PARALLEL_CALLS, len(missing)), thread_name_prefix="one") as pool:
                futures = {n: pool.submit(make, n) for n in missing}
            for vm_name, future in futures.items():
                try:
                    done[vm_name] = future.result()
                except WlcgError as exc:
                    errors.append(exc.message.removeprefix(prefix))
                    first_error = first_error or exc
                    if self.may_have_acted(exc):
                        lost.append(errors[-1])
        if lost:  # an instantiate whose answer was lost may still have made its VM: look for it
            try:
                found = [i for i in self._made_by(request.token) if i.name not in done]
            except WlcgError as exc:
                have = [done[n] for n in wanted if n in done]
                why = f"{lost[0]}; looking for them: {exc.message.removeprefix(prefix)}"
                raise UncertainLaunch(self.name, request.count, have, len(lost), why) from exc
            tell(found)
            done.update({i.name: i for i in found})
        made_now = [done[n] for n in wanted if n in done]
        if len(made_now) < len(wanted):
            why = errors[0] if errors else "not found after creation"
            if not made_now:
                raise first_error or self.cloud_error("instantiate", why)
            raise PartialLaunch(
                f"profile '{self.name}': {len(made_now)} of {request.count} VMs created; the others failed: {why}",
                made_now,
            )
        return made_now

    def _just_made(self, vm_id: int, vm_name: str, template: Any, request: LaunchRequest) -> Instance:
        """A VM instantiate has just made (PENDING), from what the request says of it, before it is read back."""
        size = self._flavor(template)
        return Instance(
            id=str(vm_id), name=vm_name, profile=self.name, provider="opennebula", state="pending",
            provider_state="PENDING", flavor=size.name, vcpus=size.vcpus, memory_mb=size.memory_mb,
            tags={**request.tags, "wlcg:request": request.token},
        )  # fmt: skip

    def launch_calls(self, request: LaunchRequest) -> list[str]:
        size = f", CONTEXT/USER_DATA={len(request.user_data)} bytes base64" if request.user_data else ""
        return [
            f"one.vmpool.infoextended (adopt an earlier attempt's VMs: "
            f"{one_attribute('wlcg:request')}={request.token})",
            f"{request.count} x one.template.instantiate(template '{request.flavor}', "
            f"image {request.image}{size}), {PARALLEL_CALLS} at a time",
        ]

    def _made_by(self, token: str) -> list[Instance]:
        attr = one_attribute("wlcg:request")
        return [i for i in self._pool(f"VM.USER_TEMPLATE.{attr}={token}") if i.tags.get("wlcg:request") == token]

    def _extra_template(self, request: LaunchRequest, template: Any) -> str:
        body = template.TEMPLATE or {}
        lines = [f"{one_attribute(k)}={quoted(v, k)}" for k, v in request.tags.items()]
        lines.append(f"{one_attribute('wlcg:request')}={quoted(request.token, 'wlcg:request')}")
        if request.user_data:
            context = dict(body.get("CONTEXT") or {})  # replaced whole by ours: keep its settings
            context["USER_DATA"] = base64.b64encode(request.user_data).decode()
            context["USER_DATA_ENCODING"] = "base64"
            if request.tags.get("wlcg:drainable"):  # its agent reads drain requests and reports through OneGate
                context["TOKEN"] = "YES"
            lines.append(f"CONTEXT={vector(context)}")
        if request.image:
            # DISK in the extra template replaces all of the template's disks: send them all,
            # with the endorsed image in place of the first image disk. Of that disk only the
            # placement settings stay; size, format and driver belong to the old image.
            disks = [dict(d) for d in as_list(body.get("DISK"))]
            first = next((d for d in disks if "IMAGE" in d or "IMAGE_ID" in d), None)
            endorsed = {k: v for k, v in (first or {}).items() if k in KEPT_DISK_SETTINGS}
            endorsed["IMAGE_ID"] = self._image_id(request.image)
            disks = [endorsed if d is first else d for d in disks] if first is not None else [endorsed, *disks]
            lines.extend(f"DISK={vector(d)}" for d in disks)
        network = request.network or self.profile.get("network")
        if network:
            key = "NETWORK_ID" if str(network).isdigit() else "NETWORK"
            lines.append(f"NIC={vector({key: network})}")
        return "\n".join(lines)

    def _image_id(self, image: str) -> str:
        """An image id from an id or a name (a name alone would need its owner: IMAGE_UNAME)."""
        if image.isdigit():
            return image
        matches = [i for i in self.images() if i.name == image]
        if len(matches) != 1:
            why = "no image" if not matches else f"{len(matches)} images"
            raise UsageError(f"profile '{self.name}': {why} named '{image}' visible to this user.", "Give its id.")
        return matches[0].id

    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> list[Outcome]:
        update = "\n".join(f"{one_attribute(k)}={quoted(v, k)}" for k, v in tags.items())

        def one(vm_id: str) -> Outcome:
            try:  # one.vm.update type 1 merges into USER_TEMPLATE, where OneGate shows it to the VM
                self.rpc("update VM", self.one.vm.update, int(vm_id), update, 1)
                return Outcome(vm_id)
            except WlcgError as exc:
                return Outcome.failed(vm_id, exc)
            except ValueError:
                return Outcome(vm_id, f"'{vm_id}' is not an OpenNebula VM id", 2)

        return self._each(one, instance_ids)

    def shutdown_message(self, inst: Instance) -> ShutdownMessage | None:
        return from_attributes(inst.tags.get(CODE_TAG), inst.tags.get(TEXT_TAG))  # OneGate's, in USER_TEMPLATE

    def terminate(self, instance_ids: Sequence[str]) -> list[Outcome]:
        def one(vm_id: str) -> Outcome:
            try:
                self.rpc("terminate VM", self.one.vm.action, "terminate", int(vm_id))
                return Outcome(vm_id)
            except WlcgError as exc:
                if isinstance(exc.__cause__, pyone.OneNoExistsException):
                    return Outcome(vm_id)  # already gone: terminating is done either way
                return Outcome.failed(vm_id, exc)
            except ValueError:
                return Outcome(vm_id, f"'{vm_id}' is not an OpenNebula VM id", 2)

        return self._each(one, instance_ids)

    def _each(self, fn: Callable[[str], Outcome], instance_ids: Sequence[str]) -> list[Outcome]:
        if not instance_ids:
            return []
        with ThreadPoolExecutor(max_workers=min(PARALLEL_CALLS, len(instance_ids)), thread_name_prefix="one") as pool:
            return list(pool.map(fn, instance_ids))


def _first(quota: Any) -> Any:
    """The VM quota entry of a VM_QUOTA element (pyone gives a list of one), or None."""
    if quota is None:
        return None
    entries = getattr(quota, "VM", None)
    if isinstance(entries, list):
        return entries[0] if entries else None
    return entries


PROVIDER = OpenNebulaProvider
