"""An OpenNebula 7.0 XML-RPC protocol peer for tests: no daemon, same wire behaviour.

What it follows (facts only, no code or schema text copied):

* OpenNebula 7.0 "XML-RPC API" reference (docs.opennebula.io/7.0, product/integration_references/
  system_interfaces/api) and the 7.0 VM guide ("Searching for VM Instances").
* The 7.0 XSDs in OpenNebula/one share/doc/xsd (vm.xsd, vm_pool.xsd, acct.xsd, user.xsd, image.xsd,
  vmtemplate.xsd) as shipped in pyone 7.0.2's generated bindings: element order below follows them.
* oned's RequestManager (Request.cc failure_response/failure_message, RequestManagerPoolInfoFilter,
  RequestManagerVirtualMachine, DispatchManagerActions, Quota.cc, PoolSQL::usr_filter/oid_filter,
  PoolObjectSQL::name_is_valid/set_umask) for reply shapes, error wording and filter semantics.

Wire shapes: success ``[True, value, 0]``; failure ``[False, message, code, resp_id, -1]`` (resp_id is
the object id for NO_EXISTS, else -1; the last item is oned's replication index, UINT64_MAX sent as
i8, i.e. -1).  Unknown methods and wrong argument types are XML-RPC faults, as from xmlrpc-c.

Simplifications (deliberate, documented): one host ("peer-host", HID 0), no scheduler: a PENDING VM
becomes ACTIVE/RUNNING ``deploy_delay`` seconds after it became pending (computed lazily from
timestamps); asynchronous actions (poweroff, terminate, ...) take effect at once.  Group quotas,
ACL rules, locks and encryption are not modelled.

oned behaviour a client must cope with (reproduced on purpose): pool listings are ORDER BY id DESC
(API_LIST_ORDER); start/end are an ID range when end >= -1, else LIMIT start,-end; the search
argument matches "contains" (LIKE %v%); an extra template in instantiate/update-merge replaces
same-name attributes whole (a CONTEXT in it drops the template's CONTEXT); VM names may not contain
&|:\\";/'#{}$<>; NIC leases are taken at allocation; unknown attributes land in USER_TEMPLATE;
quota excess is AUTHORIZATION (0x200), not ALLOCATE; vmpool.info's USER_TEMPLATE holds only
LABELS/ERROR/SCHED_MESSAGE.

Test control lives in the ``peer.`` namespace (no session): peer.reset, peer.calls, peer.set_state,
peer.add_vm, peer.add_vms, peer.set_time_offset (peer clock = wall clock, or --clock-file's, + offset), peer.now,
peer.set_deploy_delay, peer.fail (the next calls of a method fail with a code and a message that
may quote the request's session string, as oned's own messages quote requests).

Run it: ``python tests/peers/opennebula.py --port 0 [--user NAME:PASSWORD]... [--config world.json]``
prints ``READY http://127.0.0.1:<port>/RPC2``; or in-process ``with OpenNebulaPeer() as peer: peer.url``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import ipaddress
import json
import mmap
import os
import re
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from xmlrpc.client import Fault
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

ONE_VERSION = "7.0.0"

# Error codes (Request::ErrorCode)
AUTHENTICATION, AUTHORIZATION, NO_EXISTS, ACTION = 0x100, 0x200, 0x400, 0x800
XML_RPC_API, INTERNAL, ALLOCATE, LOCKED = 0x1000, 0x2000, 0x4000, 0x8000

VM_STATES = "INIT PENDING HOLD ACTIVE STOPPED SUSPENDED DONE FAILED POWEROFF UNDEPLOYED CLONING CLONING_FAILURE"
VM_STATE_NAMES = VM_STATES.split()
INIT, PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE, FAILED, POWEROFF, UNDEPLOYED = range(10)
_LCM_STATES = (
    "LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE PROLOG_MIGRATE PROLOG_RESUME "
    "EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE CLEANUP_RESUBMIT UNKNOWN HOTPLUG SHUTDOWN_POWEROFF BOOT_UNKNOWN "
    "BOOT_POWEROFF BOOT_SUSPENDED BOOT_STOPPED CLEANUP_DELETE HOTPLUG_SNAPSHOT HOTPLUG_NIC HOTPLUG_SAVEAS "
    "HOTPLUG_SAVEAS_POWEROFF HOTPLUG_SAVEAS_SUSPENDED SHUTDOWN_UNDEPLOY EPILOG_UNDEPLOY PROLOG_UNDEPLOY BOOT_UNDEPLOY "
    "HOTPLUG_PROLOG_POWEROFF HOTPLUG_EPILOG_POWEROFF BOOT_MIGRATE BOOT_FAILURE BOOT_MIGRATE_FAILURE "
    "PROLOG_MIGRATE_FAILURE PROLOG_FAILURE EPILOG_FAILURE EPILOG_STOP_FAILURE EPILOG_UNDEPLOY_FAILURE "
    "PROLOG_MIGRATE_POWEROFF PROLOG_MIGRATE_POWEROFF_FAILURE PROLOG_MIGRATE_SUSPEND PROLOG_MIGRATE_SUSPEND_FAILURE "
    "BOOT_UNDEPLOY_FAILURE BOOT_STOPPED_FAILURE PROLOG_RESUME_FAILURE PROLOG_UNDEPLOY_FAILURE"
)
LCM_STATE_NAMES = _LCM_STATES.split()
RUNNING, SHUTDOWN, UNKNOWN = 3, 12, 16
# LCM states from which terminate deletes the VM (DispatchManager::terminate)
FAILURE_LCM = {36, 37, 38, 39, 40, 41, 42, 44, 46, 47, 48, 49, 50, 61}
# History ACTION values (acct.xsd comment / VMActions)
ACTION_IDS = {
    "undeploy": 5, "undeploy-hard": 6, "hold": 7, "release": 8, "stop": 9, "suspend": 10, "resume": 11,
    "reboot": 15, "reboot-hard": 16, "resched": 17, "unresched": 18, "poweroff": 19, "poweroff-hard": 20,
    "terminate": 27, "terminate-hard": 28,
}  # fmt: skip
# vm.xsd (7.0) TEMPLATE sequence; oned keeps other attributes in USER_TEMPLATE
_VM_TEMPLATE = (
    "AUTOMATIC_DS_REQUIREMENTS AUTOMATIC_NIC_REQUIREMENTS AUTOMATIC_REQUIREMENTS CLONING_TEMPLATE_ID CONTEXT CPU "
    "CPU_COST DISK DISK_COST EMULATOR FEATURES HYPERV_OPTIONS GRAPHICS VIDEO IMPORTED INPUT MEMORY MEMORY_COST "
    "MEMORY_MAX MEMORY_SLOTS MEMORY_RESIZE_MODE NIC NIC_ALIAS NIC_DEFAULT NUMA_NODE OS PCI RAW SECURITY_GROUP_RULE "
    "SNAPSHOT SPICE_OPTIONS SUBMIT_ON_HOLD TEMPLATE_ID TM_MAD_SYSTEM TOPOLOGY TPM VCPU VCPU_MAX VMGROUP VMID "
    "VROUTER_ID VROUTER_KEEPALIVED_ID VROUTER_KEEPALIVED_PASSWORD SCHED_ACTION"
)
VM_TEMPLATE_ORDER = _VM_TEMPLATE.split()
_TEMPLATE_RANK = {name: i for i, name in enumerate(VM_TEMPLATE_ORDER)}
# What VirtualMachine::to_xml_short keeps for one.vmpool.info
SHORT_DISK = {"DATASTORE", "DATASTORE_ID", "DISK_ID", "IMAGE", "IMAGE_ID", "SIZE", "TARGET", "TYPE"}
SHORT_NIC = {"IP", "IP6", "IP6_GLOBAL", "IP6_ULA", "MAC", "NETWORK", "NETWORK_ID", "NIC_ID", "SECURITY_GROUPS"}
SHORT_USER_TEMPLATE = ("ERROR", "LABELS", "SCHED_MESSAGE")
QUOTA_METRICS = ("VMS", "RUNNING_VMS", "CPU", "RUNNING_CPU", "MEMORY", "RUNNING_MEMORY", "SYSTEM_DISK_SIZE")
INVALID_NAME_CHARS = "&|:\\\";/'#{}$<>"  # PoolObjectSQL::INVALID_NAME_CHARS
NOT_RUNNING = {SUSPENDED, POWEROFF, STOPPED, UNDEPLOYED, DONE}  # states that released RUNNING_* quota

Value = str | dict[str, str]
Attr = tuple[str, Value]


class OneError(Exception):
    """A failed call: becomes [False, message, code, resp_id, -1]."""

    def __init__(self, code: int, message: str, resp_id: int = -1) -> None:
        super().__init__(message)
        self.code, self.message, self.resp_id = code, message, resp_id


# ---- OpenNebula template syntax:  KEY = "value" | KEY = value | VEC = [ K = "v", K2 = v2 ] | # comment
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]+")
# oned's template lexer knows one escape inside double quotes, \" for "; any other backslash is literal.
_QUOTED_RE = re.compile(r'"((?:[^"\\]+|\\"|\\(?!"))*)"', re.DOTALL)
_SPACE_RE = re.compile(r"(?:\s+|#[^\n]*)*")


class TemplateSyntaxError(ValueError):
    pass


def parse_template(text: str) -> list[Attr]:
    """Parse OpenNebula template text (or an XML <TEMPLATE>) into ordered (NAME, value) pairs."""
    if text.lstrip().startswith("<"):
        return _parse_xml_template(text)
    attrs: list[Attr] = []
    pos, end = 0, len(text)

    def skip(p: int) -> int:
        m = _SPACE_RE.match(text, p)
        return m.end() if m else p

    def fail(p: int, what: str) -> TemplateSyntaxError:
        line = text.count("\n", 0, p) + 1
        col = p - (text.rfind("\n", 0, p) + 1)
        return TemplateSyntaxError(f"Parse error: syntax error, {what} at line {line}, columns {col}:{col + 1}")

    def value(p: int, stops: str) -> tuple[str, int]:
        if p < end and text[p] == '"':
            m = _QUOTED_RE.match(text, p)
            if not m:
                raise fail(p, "unterminated string")
            return m.group(1).replace('\\"', '"'), m.end()
        q = p
        while q < end and text[q] not in stops:
            q += 1
        return text[p:q].strip(), q

    while True:
        pos = skip(pos)
        if pos >= end:
            return attrs
        m = _NAME_RE.match(text, pos)
        if not m:
            raise fail(pos, f"unexpected '{text[pos]}', expecting VARIABLE")
        name, pos = m.group().upper(), skip(m.end())
        if pos >= end or text[pos] != "=":
            raise fail(pos, "expecting EQUAL")
        pos = skip(pos + 1)
        if pos < end and text[pos] == "[":
            vec: dict[str, str] = {}
            pos = skip(pos + 1)
            while pos < end and text[pos] != "]":
                km = _NAME_RE.match(text, pos)
                if not km:
                    raise fail(pos, "expecting VARIABLE in vector")
                pos = skip(km.end())
                if pos >= end or text[pos] != "=":
                    raise fail(pos, "expecting EQUAL in vector")
                val, pos = value(skip(pos + 1), ",]\n")
                vec[km.group().upper()] = val
                pos = skip(pos)
                if pos < end and text[pos] == ",":
                    pos = skip(pos + 1)
            if pos >= end:
                raise fail(pos, "expecting ']'")
            attrs.append((name, vec))
            pos += 1
        else:
            val, pos = value(pos, "\n")
            attrs.append((name, val))


def _parse_xml_template(text: str) -> list[Attr]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise TemplateSyntaxError(f"Parse error: {exc}") from exc
    attrs: list[Attr] = []
    for child in root:
        if len(child):
            attrs.append((child.tag.upper(), {sub.tag.upper(): sub.text or "" for sub in child}))
        else:
            attrs.append((child.tag.upper(), child.text or ""))
    return attrs


def merge_attrs(base: list[Attr], new: list[Attr]) -> list[Attr]:
    """Template::merge: every name present in `new` replaces all attributes of that name in `base`."""
    names = {n for n, _ in new}
    return [a for a in base if a[0] not in names] + [(n, copy.copy(v)) for n, v in new]


def _single(attrs: list[Attr], name: str) -> str | None:
    for n, v in attrs:
        if n == name and isinstance(v, str):
            return v
    return None


def _pop(attrs: list[Attr], name: str) -> str | None:
    value = _single(attrs, name)
    attrs[:] = [a for a in attrs if a[0] != name]
    return value


# ---- XML rendering (text is escaped, never CDATA; names/values may hold <, &, quotes, unicode)
def _x(value: object) -> str:
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _tags(*pairs: tuple[str, object]) -> str:
    return "".join(f"<{k}>{_x(v)}</{k}>" for k, v in pairs)


def _attrs_xml(attrs: list[Attr], rank: dict[str, int] | None = None, keep: set[str] | None = None) -> str:
    # oned stores templates in a multimap, so output is sorted by name (stable for repeats); vector
    # attributes are maps, also sorted.  For VM TEMPLATE the vm.xsd sequence order is used.
    key = (lambda a: (rank.get(a[0], len(rank)), a[0])) if rank else (lambda a: a[0])
    out = []
    for name, val in sorted(attrs, key=key):
        if isinstance(val, dict):
            inner = "".join(f"<{k}>{_x(v)}</{k}>" for k, v in sorted(val.items()) if keep is None or k in keep)
            out.append(f"<{name}>{inner}</{name}>")
        else:
            out.append(f"<{name}>{_x(val)}</{name}>")
    return "".join(out)


def _perms_xml(p: tuple[int, ...]) -> str:
    names = ("OWNER_U", "OWNER_M", "OWNER_A", "GROUP_U", "GROUP_M", "GROUP_A", "OTHER_U", "OTHER_M", "OTHER_A")
    return "<PERMISSIONS>" + _tags(*zip(names, p, strict=True)) + "</PERMISSIONS>"


def _perms_from_umask(uid: int, gid: int, umask: int) -> tuple[int, ...]:
    base = 0o777 if uid == 0 or gid == 0 else 0o660  # PoolObjectSQL::set_umask
    bits = base & ~umask
    return tuple(int(bool(bits & (1 << (8 - i)))) for i in range(9))


def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:.2f}"  # one_util::float_to_str


# ---- World model
@dataclass
class _User:
    id: int
    name: str
    password: str
    gid: int
    gname: str
    groups: list[int]
    umask: int = 0o177
    quota: dict[str, float] = field(default_factory=dict)

    @property
    def admin(self) -> bool:
        return self.id == 0 or 0 in self.groups


@dataclass
class _Obj:  # templates, images, networks
    id: int
    name: str
    uid: int
    uname: str
    gid: int
    gname: str
    perms: tuple[int, ...]
    attrs: list[Attr]
    size: int = 0  # image MB
    base: int = 0  # network first address
    count: int = 0  # network lease count
    next: int = 0
    free: list[int] = field(default_factory=list)
    regtime: int = 0
    state: int = 1  # images: Image::ImageState (1 READY, 4 LOCKED while the datastore copies, 5 ERROR)


@dataclass
class _Hist:
    seq: int
    stime: int
    uid: int = -1
    gid: int = -1
    req_id: int = -1
    etime: int = 0
    retime: int = 0
    estime: int = 0
    eetime: int = 0
    action: int = 0
    vm_xml: str = ""

    def xml(self, oid: int, acct: bool = False) -> str:
        s = self.stime
        return (
            f"<HISTORY><OID>{oid}</OID><SEQ>{self.seq}</SEQ><HOSTNAME>peer-host</HOSTNAME><HID>0</HID><CID>0</CID>"
            f"<STIME>{s}</STIME><ETIME>{self.etime}</ETIME><VM_MAD>kvm</VM_MAD><TM_MAD>ssh</TM_MAD><DS_ID>0</DS_ID>"
            f"<PLAN_ID>-1</PLAN_ID><ACTION_ID>-1</ACTION_ID><PSTIME>{s}</PSTIME><PETIME>{s}</PETIME>"
            f"<RSTIME>{s}</RSTIME><RETIME>{self.retime}</RETIME><ESTIME>{self.estime}</ESTIME>"
            f"<EETIME>{self.eetime}</EETIME><ACTION>{self.action}</ACTION><UID>{self.uid}</UID><GID>{self.gid}</GID>"
            f"<REQUEST_ID>{self.req_id}</REQUEST_ID>{self.vm_xml if acct else ''}</HISTORY>"
        )


@dataclass
class _VM:
    id: int
    uid: int
    gid: int
    uname: str
    gname: str
    name: str
    perms: tuple[int, ...]
    stime: int
    template: list[Attr]
    user_template: list[Attr]
    cpu: float
    memory: int
    disk_mb: int
    state: int = PENDING
    lcm: int = 0
    prev_state: int = PENDING
    prev_lcm: int = 0
    resched: int = 0
    etime: int = 0
    deploy_id: str = ""
    last_poll: int = 0
    pending_since: float = 0.0
    history: list[_Hist] = field(default_factory=list)
    leases: list[tuple[int, int]] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)

    @property
    def state_str(self) -> str:  # VirtualMachine::state_str
        return LCM_STATE_NAMES[self.lcm] if self.state == ACTIVE else VM_STATE_NAMES[self.state]


_PUBLIC = (1, 1, 0, 1, 0, 0, 1, 0, 0)  # oneadmin-owned shared objects: "um- u-- u--"

DEFAULT_WORLD: dict[str, Any] = {
    "groups": {"0": "oneadmin", "100": "atlas", "101": "cms"},
    "users": [
        {"id": 0, "name": "oneadmin", "password": "opennebula", "gid": 0},
        # umask 137 (sites often relax the 177 default) so group members see each other's VMs (filter -1)
        {"id": 2, "name": "atlas", "password": "secret", "gid": 100, "umask": "137",
         "quota": {"VMS": 100, "CPU": 400, "MEMORY": 819200}},
        {"id": 3, "name": "cms", "password": "secret", "gid": 101, "umask": "137",
         "quota": {"VMS": 10, "CPU": 40, "MEMORY": 81920}},
    ],
    "default_user_quotas": {},
    "networks": [{"id": 0, "name": "atlas-net", "owner": "oneadmin", "address": "10.10.0.0/16"}],
    "images": [
        {"id": 0, "name": "cernvm-4", "owner": "oneadmin", "size": 20480,
         "template": 'DESCRIPTION="CernVM 4"\nWLCG_ENDORSED_ID="cernvm-4-2024.06"\nWLCG_ENDORSED_BY="wlcg"\n'},
    ],
    "templates": [
        {"id": 0, "name": "atlas-wn", "owner": "oneadmin", "template": (
            'CPU="1"\nVCPU="2"\nMEMORY="4096"\nDISK=[IMAGE="cernvm-4",IMAGE_UNAME="oneadmin",SIZE="20480"]\n'
            'NIC=[NETWORK="atlas-net",NETWORK_UNAME="oneadmin"]\nCONTEXT=[NETWORK="YES",HOSTNAME="$NAME"]\n'
            'GRAPHICS=[LISTEN="0.0.0.0",TYPE="VNC"]\nOS=[ARCH="x86_64"]\n')},
        {"id": 1, "name": "atlas-large", "owner": "oneadmin", "template": (
            'CPU="4"\nVCPU="8"\nMEMORY="16384"\nDISK=[IMAGE="cernvm-4",IMAGE_UNAME="oneadmin",SIZE="40960"]\n'
            'NIC=[NETWORK="atlas-net",NETWORK_UNAME="oneadmin"]\nCONTEXT=[NETWORK="YES"]\n')},
    ],
}  # fmt: skip


# ---- The peer
class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2",)
    encode_threshold = None  # oned (xmlrpc-c/abyss) does not gzip replies


class _Server(ThreadingHTTPServer, SimpleXMLRPCDispatcher):
    daemon_threads = True

    def __init__(self, port: int, peer: OpenNebulaPeer) -> None:
        self.logRequests = False
        self.peer = peer
        SimpleXMLRPCDispatcher.__init__(self, allow_none=False, encoding="utf-8")
        ThreadingHTTPServer.__init__(self, ("127.0.0.1", port), _Handler)

    def _dispatch(self, method: str, params: Any) -> Any:
        return self.peer.dispatch(method, list(params))


class OpenNebulaPeer:
    """The in-process peer.  ``start()`` returns the endpoint URL; use as a context manager."""

    def __init__(
        self,
        users: list[dict[str, Any]] | None = None,
        templates: list[dict[str, Any]] | None = None,
        images: list[dict[str, Any]] | None = None,
        networks: list[dict[str, Any]] | None = None,
        groups: dict[str, str] | None = None,
        default_user_quotas: dict[str, float] | None = None,
        deploy_delay: float = 0.2,
        list_order: str = "DESC",  # oned.conf API_LIST_ORDER default since 5.10
        port: int = 0,
        download_ca: str | None = None,  # CA file the datastore trusts when it fetches an image's PATH
    ) -> None:
        self._download_ca = download_ca
        world = copy.deepcopy(DEFAULT_WORLD)
        for key, val in (("users", users), ("templates", templates), ("images", images), ("networks", networks)):
            if val is not None:
                world[key] = val
        world["groups"].update(groups or {})
        if default_user_quotas is not None:
            world["default_user_quotas"] = default_user_quotas
        self._world, self._delay0, self._desc, self._port = world, deploy_delay, list_order.upper() == "DESC", port
        self._lock = threading.RLock()
        self._clock: mmap.mmap | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.reset()
        self._methods: dict[str, Callable[[str, _User, list[Any]], Any]] = {
            "one.system.version": lambda m, u, p: ONE_VERSION,
            "one.user.info": self._user_info,
            "one.user.quota": self._user_quota,
            "one.template.info": self._template_info,
            "one.templatepool.info": self._templatepool_info,
            "one.template.instantiate": self._template_instantiate,
            "one.vm.allocate": self._vm_allocate,
            "one.vm.info": self._vm_info,
            "one.vm.update": self._vm_update,
            "one.vm.action": self._vm_action,
            "one.vmpool.info": self._vmpool_info,
            "one.vmpool.infoextended": self._vmpool_info,
            "one.vmpool.accounting": self._vmpool_accounting,
            "one.imagepool.info": self._imagepool_info,
            "one.vnpool.info": self._vnpool_info,
            "one.image.allocate": self._image_allocate,
            "one.image.info": self._image_info,
            "one.image.delete": self._image_delete,
        }
        self._control: dict[str, Callable[..., Any]] = {
            "peer.reset": self.reset, "peer.calls": self.calls, "peer.set_state": self.set_state,
            "peer.add_vm": self.add_vm, "peer.add_vms": self.add_vms, "peer.set_time_offset": self.set_time_offset,
            "peer.now": self.now, "peer.set_deploy_delay": self.set_deploy_delay, "peer.fail": self.fail,
        }  # fmt: skip

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> str:
        self._server = _Server(self._port, self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="one-peer", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/RPC2"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenNebulaPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- control (peer.*)
    def reset(self) -> bool:
        with self._lock:
            w = self._world
            self._offset, self._delay = 0.0, self._delay0
            self._calls: Counter[str] = Counter()
            self._groups = {int(k): v for k, v in w["groups"].items()}
            self._users: dict[int, _User] = {}
            for u in w["users"]:
                gid = int(u.get("gid", 1))
                self._users[int(u["id"])] = _User(
                    int(u["id"]), u["name"], u["password"], gid, self._groups.get(gid, f"group{gid}"),
                    sorted({gid, *u.get("groups", [])}), int(str(u.get("umask", "177")), 8),
                    {k.upper(): float(v) for k, v in u.get("quota", {}).items()},
                )  # fmt: skip
            self._default_quota = {k.upper(): float(v) for k, v in w["default_user_quotas"].items()}
            now = int(self.now())
            self._templates = {int(t["id"]): self._obj(t, now) for t in w["templates"]}
            self._images = {int(i["id"]): self._obj(i, now) for i in w["images"]}
            self._networks = {int(n["id"]): self._obj(n, now) for n in w["networks"]}
            self._vms: dict[int, _VM] = {}
            self._pending: set[int] = set()
            self._next_vm = 0
            self._failures: dict[str, list[tuple[int, str]]] = {}
        return True

    def _obj(self, spec: dict[str, Any], now: int) -> _Obj:
        owner = next(u for u in self._users.values() if u.name == spec.get("owner", "oneadmin"))
        tmpl = spec.get("template", "")
        attrs = parse_template(tmpl) if isinstance(tmpl, str) else [(k.upper(), str(v)) for k, v in tmpl.items()]
        obj = _Obj(int(spec["id"]), spec["name"], owner.id, owner.name, owner.gid, owner.gname,
                   tuple(spec.get("perms", _PUBLIC)), attrs, size=int(spec.get("size", 0)), regtime=now)  # fmt: skip
        if "address" in spec:
            net = ipaddress.ip_network(spec["address"], strict=False)
            obj.base, obj.count = int(net.network_address) + 1, max(net.num_addresses - 2, 1)
        return obj

    def calls(self) -> dict[str, int]:
        with self._lock:
            return dict(self._calls)

    def now(self) -> float:
        if self._clock is not None:  # a simulation's clock (--clock-file): little-endian double, Unix seconds
            return float(struct.unpack_from("<d", self._clock, 0)[0]) + self._offset
        return time.time() + self._offset

    def use_clock_file(self, path: str) -> None:
        """Take the time from the first 8 bytes of `path` (written by a simulation) instead of the wall clock."""
        with open(path, "rb") as fh:
            self._clock = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)

    def set_time_offset(self, seconds: float) -> int:
        with self._lock:
            self._offset = float(seconds)
            return int(self.now())

    def fail(self, method: str, code: int, message: str, times: int = 1) -> bool:
        """The next `times` authenticated calls of `method` fail with `code` (e.g. AUTHORIZATION, 0x200) and
        `message`, in which "{session}" stands for the call's session string ("user:password")."""
        with self._lock:
            self._failures.setdefault(method, []).extend([(int(code), message)] * int(times))
        return True

    def set_deploy_delay(self, seconds: float) -> bool:
        self._delay = float(seconds)
        return True

    def set_state(self, vm_id: int, state: int, lcm_state: int = 0) -> bool:
        with self._lock:
            vm = self._vms.get(vm_id)
            if vm is None:
                raise Fault(1, f"peer: no VM {vm_id}")
            if state == ACTIVE and (not vm.history or vm.history[-1].etime or vm.state != ACTIVE):
                self._deploy(vm, int(self.now()))
            if state == DONE:
                self._finish(vm, 0, None)
            self._set(vm, state, lcm_state)
            if state == PENDING:
                vm.pending_since = self.now()
                self._pending.add(vm.id)
            return True

    def add_vm(self, owner: str, template: str, state: int = ACTIVE, lcm_state: int = RUNNING) -> int:
        return self.add_vms(owner, template, 1, state, lcm_state)[0]

    def add_vms(self, owner: str, template: str, count: int, state: int = ACTIVE, lcm_state: int = RUNNING) -> list:
        """Seed VMs "created by another tool": no quota check, state forced."""
        with self._lock:
            user = next(u for u in self._users.values() if u.name == owner)
            attrs = parse_template(template)
            ids = [self._create_vm("peer.add_vm", user, list(attrs), False, quota=False).id for _ in range(count)]
            for vm_id in ids:
                self.set_state(vm_id, state, lcm_state)
            return ids

    # ---------------------------------------------------------------- dispatch
    def dispatch(self, method: str, params: list[Any]) -> Any:
        if method in self._control:
            return self._control[method](*params)
        handler = self._methods.get(method)
        if handler is None:
            raise Fault(-506, f"Method '{method}' not defined")  # xmlrpc-c XMLRPC_NO_SUCH_METHOD_ERROR
        with self._lock:
            self._calls[method] += 1
            try:
                session = _arg(params, 0, str)
                name, _, password = session.partition(":")
                user = next((u for u in self._users.values() if u.name == name), None)
                if user is None or user.password != password:
                    raise OneError(AUTHENTICATION, f"[{method}] User couldn't be authenticated, aborting call.")
                if self._failures.get(method):
                    code, message = self._failures[method].pop(0)
                    raise OneError(code, message.replace("{session}", session))
                self._tick()
                return [True, handler(method, user, params), 0]
            except OneError as err:
                return [False, err.message, err.code, err.resp_id, -1]

    # ---------------------------------------------------------------- helpers
    def _tick(self) -> None:
        """Lazy scheduler: deploy PENDING VMs whose delay has passed, at the time they would have."""
        now = self.now()
        for vm_id in list(self._pending):
            vm = self._vms[vm_id]
            if vm.state != PENDING:
                self._pending.discard(vm_id)
            elif now >= vm.pending_since + self._delay:
                self._pending.discard(vm_id)
                self._deploy(vm, int(vm.pending_since + self._delay))

    def _set(self, vm: _VM, state: int, lcm: int) -> None:
        vm.prev_state, vm.prev_lcm, vm.state, vm.lcm = vm.state, vm.lcm, state, lcm
        vm.cache.clear()

    def _deploy(self, vm: _VM, ts: int) -> None:
        """Scheduler + LCM: ACTIVE/RUNNING on peer-host, a new history record (SEQ+1) opened at ts."""
        self._set(vm, ACTIVE, RUNNING)
        vm.deploy_id, vm.last_poll = vm.deploy_id or f"one-{vm.id}", ts
        vm.template = [a for a in vm.template if a[0] != "TM_MAD_SYSTEM"] + [("TM_MAD_SYSTEM", "ssh")]
        vm.history.append(_Hist(len(vm.history), ts))
        vm.cache.clear()
        vm.history[-1].vm_xml = self._vm_xml(vm, acct=True)

    def _close(self, vm: _VM, action: int, actor: _User | None) -> None:
        if vm.history and not vm.history[-1].etime:
            now, h = int(self.now()), vm.history[-1]
            h.etime, h.retime, h.estime, h.eetime = now, h.retime or now, now, now
            self._record(vm, action, actor)

    def _record(self, vm: _VM, action: int, actor: _User | None) -> None:
        h = vm.history[-1]
        h.action = action
        if actor:
            h.uid, h.gid, h.req_id = actor.id, actor.gid, self._calls.total()
        vm.cache.clear()
        h.vm_xml = self._vm_xml(vm, acct=True)

    def _finish(self, vm: _VM, action: int, actor: _User | None) -> None:
        """DispatchManager::free_vm_resources: DONE, ETIME, leases back, history closed."""
        vm.etime = int(self.now())
        self._set(vm, DONE, 0)
        for net_id, index in vm.leases:
            self._networks[net_id].free.append(index)
        vm.leases = []
        self._close(vm, action, actor)

    def _can(self, user: _User, uid: int, gid: int, perms: tuple[int, ...], op: str) -> bool:
        i = {"USE": 0, "MANAGE": 1, "ADMIN": 2}[op]
        return (
            user.admin
            or (uid == user.id and perms[i] == 1)
            or (gid in user.groups and perms[3 + i] == 1)
            or (perms[6 + i] == 1)
        )

    def _authorize(self, method: str, user: _User, obj: _VM | _Obj, op: str, kind: str) -> None:
        if not self._can(user, obj.uid, obj.gid, obj.perms, op):
            raise OneError(
                AUTHORIZATION, f"[{method}] User [{user.id}] : Not authorized to perform {op} {kind} [{obj.id}]."
            )

    def _get_vm(self, method: str, vm_id: int) -> _VM:
        vm = self._vms.get(vm_id)
        if vm is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting virtual machine [{vm_id}].", vm_id)
        return vm

    def _visible(self, user: _User, uid: int, gid: int, perms: tuple[int, ...], flag: int) -> bool:
        """PoolSQL::usr_filter (ACL rules other than admin are not modelled)."""
        shared = user.admin or perms[6] == 1 or (gid in user.groups and perms[3] == 1)
        if flag == -3:
            return uid == user.id
        if flag == -4:
            return gid == user.gid
        if flag == -1:
            return uid == user.id or (gid in user.groups and shared)
        if flag == -2:
            return uid == user.id or shared
        return uid == flag and (flag == user.id or shared)

    def _page(
        self, method: str, user: _User, objs: list[Any], params: list[Any], check: Callable | None = None
    ) -> list:
        """RequestManagerPoolInfoFilter::dump: filter flag, id range or LIMIT offset,size; ORDER BY oid."""
        flag, start, end = _arg(params, 1, int), _arg(params, 2, int), _arg(params, 3, int)
        if flag < -4:
            raise OneError(XML_RPC_API, f"[{method}] Incorrect filter_flag")
        rows = [o for o in objs if self._visible(user, o.uid, o.gid, o.perms, flag) and (check is None or check(o))]
        if end >= -1 and start != -1:
            rows = [o for o in rows if o.id >= start and (end == -1 or o.id <= end)]
        rows.sort(key=lambda o: o.id, reverse=self._desc)
        if end < -1:
            rows = rows[max(start, 0) : max(start, 0) - end]
        return rows

    def _parse(self, method: str, text: str) -> list[Attr]:
        try:
            return parse_template(text)
        except TemplateSyntaxError as exc:
            raise OneError(INTERNAL, f"[{method}] {exc}") from None

    # ---------------------------------------------------------------- usage & quotas
    def _usage(self, user: _User) -> dict[str, float]:
        used = dict.fromkeys(QUOTA_METRICS, 0.0)
        for vm in self._vms.values():
            if vm.uid != user.id or vm.state == DONE:
                continue
            used["VMS"] += 1
            used["CPU"] += vm.cpu
            used["MEMORY"] += vm.memory
            used["SYSTEM_DISK_SIZE"] += vm.disk_mb
            if vm.state not in NOT_RUNNING:
                used["RUNNING_VMS"] += 1
                used["RUNNING_CPU"] += vm.cpu
                used["RUNNING_MEMORY"] += vm.memory
        return used

    def _limit(self, user: _User, metric: str) -> float:
        limit = user.quota.get(metric, -1.0)
        return self._default_quota.get(metric, -2.0) if limit == -1 else limit  # -1 default, -2 unlimited

    def _quota_error(self, user: _User, request: dict[str, float]) -> str | None:
        """Quota::check_quota; returns oned's error text or None."""
        if user.admin:
            return None
        used = self._usage(user)
        for metric in QUOTA_METRICS:
            limit = self._limit(user, metric)
            if metric in request and limit != -2 and used[metric] + request[metric] > limit:
                return f"user [{user.id}] limit of {limit:g} reached for {metric} quota in VM"
        return None

    def _quota_xml(self, user: _User) -> str:
        used = self._usage(user)
        if not user.quota and not any(used.values()):
            return "<VM_QUOTA/>"
        pairs = sorted((m, user.quota.get(m, -1.0)) for m in QUOTA_METRICS)
        body = "".join(f"<{m}>{_num(lim)}</{m}><{m}_USED>{_num(used[m])}</{m}_USED>" for m, lim in pairs)
        return f"<VM_QUOTA><VM>{body}</VM></VM_QUOTA>"

    # ---------------------------------------------------------------- VM creation
    def _create_vm(self, method: str, user: _User, attrs: list[Attr], hold: bool, quota: bool = True) -> _VM:
        vm_id, now = self._next_vm, int(self.now())
        memory, cpu, vcpu = _single(attrs, "MEMORY"), _single(attrs, "CPU"), _single(attrs, "VCPU")
        if not _is_num(memory, int) or int(memory or 0) <= 0:
            raise OneError(INTERNAL, f"[{method}] MEMORY attribute must be a positive integer value.")
        if not _is_num(cpu, float) or float(cpu or 0) <= 0:
            raise OneError(INTERNAL, f"[{method}] CPU attribute must be a positive float or integer value.")
        if vcpu is not None and (not _is_num(vcpu, int) or int(vcpu) <= 0):
            raise OneError(INTERNAL, f"[{method}] VCPU attribute must be a positive integer value.")
        disks = [dict(v) for n, v in attrs if n == "DISK" and isinstance(v, dict)]
        images = [self._find(method, user, d, "IMAGE") for d in disks]
        disk_mb = sum(int(d.get("SIZE") or (img.size if img else 0)) for d, img in zip(disks, images, strict=True))
        request = {
            "VMS": 1,
            "RUNNING_VMS": 1,
            "CPU": float(cpu or 0),
            "RUNNING_CPU": float(cpu or 0),
            "MEMORY": int(memory or 0),
            "RUNNING_MEMORY": int(memory or 0),
            "SYSTEM_DISK_SIZE": disk_mb,
        }
        error = self._quota_error(user, request) if quota else None
        if error:  # allocate_authorization -> failure_response(AUTHORIZATION)
            raise OneError(AUTHORIZATION, f"[{method}] User [{user.id}] : {error}.")
        name, prefix = _pop(attrs, "NAME"), _pop(attrs, "TEMPLATE_NAME") or "one"
        name = name or f"{prefix}-{vm_id}"
        bad = next((c for c in name if c in INVALID_NAME_CHARS), None)
        if bad or len(name.encode()) > 128:
            why = f"char '{bad}' is not allowed" if bad else "max length is 128 chars"
            raise OneError(INTERNAL, f"[{method}] Invalid NAME, {why}")
        for disk, img in zip(disks, images, strict=True):
            if img:
                disk.update(IMAGE=img.name, IMAGE_ID=str(img.id), IMAGE_UNAME=img.uname, DATASTORE="default",
                            DATASTORE_ID="1", TYPE="FILE", SIZE=disk.get("SIZE", str(img.size)))  # fmt: skip
        nics = [dict(v) for n, v in attrs if n == "NIC" and isinstance(v, dict)]
        leases = self._leases(method, user, vm_id, nics)
        for i, disk in enumerate(disks):
            disk.update(DISK_ID=str(i), TARGET="vd" + "abcdefghijklmnop"[i])
        hold = hold or (_pop(attrs, "SUBMIT_ON_HOLD") or "").upper() in ("YES", "TRUE")
        plain = [a for a in attrs if a[0] not in ("DISK", "NIC", "VMID")]
        plain = [
            (n, {**v, "DISK_ID": str(len(disks))} if n == "CONTEXT" and isinstance(v, dict) else v) for n, v in plain
        ]
        tmpl: list[Attr] = [("DISK", d) for d in disks] + [("NIC", n) for n in nics] + [("VMID", str(vm_id))]
        tmpl += [("AUTOMATIC_REQUIREMENTS", "!(PUBLIC_CLOUD = YES) & !(PIN_POLICY = PINNED)")]
        perms = _perms_from_umask(user.id, user.gid, user.umask)
        vm = _VM(
            vm_id, user.id, user.gid, user.name, user.gname, name, perms, now,
            tmpl + [a for a in plain if a[0] in _TEMPLATE_RANK], [a for a in plain if a[0] not in _TEMPLATE_RANK],
            float(cpu or 0), int(memory or 0), disk_mb, state=HOLD if hold else PENDING, prev_state=INIT,
            pending_since=self.now(), leases=leases, images=[i.id for i in images if i],
        )  # fmt: skip
        self._vms[vm_id], self._next_vm = vm, vm_id + 1
        if not hold:
            self._pending.add(vm_id)
        return vm

    def _find(self, method: str, user: _User, spec: dict[str, str], kind: str) -> _Obj | None:
        """Resolve DISK IMAGE/IMAGE_ID or NIC NETWORK/NETWORK_ID like oned: by id, or by name among the
        objects of one owner (<KIND>_UNAME / <KIND>_UID, else the caller)."""
        pool, what = (self._images, "image") if kind == "IMAGE" else (self._networks, "virtual network")
        ref_id, ref_name = spec.get(f"{kind}_ID"), spec.get(kind)
        if ref_id is not None:
            obj = pool.get(int(ref_id)) if ref_id.isdigit() else None
            if obj is None:
                raise OneError(INTERNAL, f"[{method}] Error getting {what} [{ref_id}].")
        elif ref_name is not None:
            uname, uid = spec.get(f"{kind}_UNAME"), spec.get(f"{kind}_UID", str(user.id))
            obj = next((o for o in pool.values() if o.name == ref_name and (o.uname == uname or
                        (uname is None and str(o.uid) == uid))), None)  # fmt: skip
            if obj is None:
                noun, section = ("an image", "DISK") if kind == "IMAGE" else ("a network", "NIC")
                raise OneError(INTERNAL, f"[{method}] User {user.id} does not own {noun} with name: {ref_name} . "
                               f"Set {kind}_UNAME or {kind}_UID of owner in {section}.")  # fmt: skip
        else:
            return None
        self._authorize(method, user, obj, "USE", "IMAGE" if kind == "IMAGE" else "NET")
        return obj

    def _leases(self, method: str, user: _User, vm_id: int, nics: list[dict[str, str]]) -> list[tuple[int, int]]:
        leases: list[tuple[int, int]] = []
        for i, nic in enumerate(nics):
            net = self._find(method, user, nic, "NETWORK")
            if net is None:
                continue
            if not net.free and net.next >= net.count:
                for nid, idx in leases:
                    self._networks[nid].free.append(idx)
                raise OneError(INTERNAL, f"[{method}] Cannot get IP/MAC lease from virtual network {net.id}.")
            index = net.free.pop(0) if net.free else net.next
            net.next += 0 if index < net.next else 1
            leases.append((net.id, index))
            ip = ipaddress.IPv4Address(net.base + index)
            nic.update(AR_ID="0", BRIDGE="br0", IP=str(ip), MAC="02:00:" + ":".join(f"{b:02x}" for b in ip.packed),
                       NAME=f"NIC{i}", NETWORK=net.name, NETWORK_ID=str(net.id), NETWORK_UNAME=net.uname,
                       NIC_ID=str(i), SECURITY_GROUPS="0", TARGET=f"one-{vm_id}-{i}", VN_MAD="bridge")  # fmt: skip
        return leases

    # ---------------------------------------------------------------- XML bodies
    def _vm_xml(self, vm: _VM, acct: bool = False) -> str:
        key = "acct" if acct else "full"
        if key not in vm.cache:
            running = vm.state == ACTIVE and vm.lcm == RUNNING
            mon = _tags(("CPU", "0.0"), ("ID", vm.id), ("MEMORY", vm.memory * 1024), ("TIMESTAMP", vm.last_poll))
            hist = "" if acct else "".join(h.xml(vm.id) for h in vm.history)
            vm.cache[key] = (
                f"<VM>{_tags(('ID', vm.id), ('UID', vm.uid), ('GID', vm.gid), ('UNAME', vm.uname))}"
                f"{_tags(('GNAME', vm.gname), ('NAME', vm.name))}{_perms_xml(vm.perms)}"
                f"{_tags(('LAST_POLL', vm.last_poll), ('STATE', vm.state), ('LCM_STATE', vm.lcm))}"
                f"{_tags(('PREV_STATE', vm.prev_state), ('PREV_LCM_STATE', vm.prev_lcm), ('RESCHED', vm.resched))}"
                f"{_tags(('STIME', vm.stime), ('ETIME', vm.etime), ('DEPLOY_ID', vm.deploy_id))}"
                f"<MONITORING>{mon if running else ''}</MONITORING><SCHED_ACTIONS/>"
                f"<TEMPLATE>{_attrs_xml(vm.template, _TEMPLATE_RANK)}</TEMPLATE>"
                f"<USER_TEMPLATE>{_attrs_xml(vm.user_template)}</USER_TEMPLATE>"
                f"<HISTORY_RECORDS>{hist}</HISTORY_RECORDS><BACKUPS><BACKUP_CONFIG/><BACKUP_IDS/></BACKUPS></VM>"
            )
        return vm.cache[key]

    def _vm_xml_short(self, vm: _VM) -> str:
        """VirtualMachine::to_xml_short, the body of one.vmpool.info (vm_pool.xsd)."""
        if "short" not in vm.cache:
            t = vm.template  # vm_pool.xsd order: CPU MEMORY VCPU DISK* NIC* GRAPHICS
            tmpl = "".join(f"<{n}>{_x(v)}</{n}>" for n in ("CPU", "MEMORY", "VCPU") if (v := _single(t, n)) is not None)
            tmpl += _attrs_xml([a for a in t if a[0] == "DISK"], keep=SHORT_DISK)
            tmpl += _attrs_xml([a for a in t if a[0] == "NIC"], keep=SHORT_NIC)
            tmpl += _attrs_xml([a for a in t if a[0] == "GRAPHICS"])
            user = _attrs_xml([a for a in vm.user_template if a[0] in SHORT_USER_TEMPLATE])
            hist = ""
            if vm.history:
                h = vm.history[-1]
                hist = (f"<HISTORY><OID>{vm.id}</OID><SEQ>{h.seq}</SEQ><HOSTNAME>peer-host</HOSTNAME><HID>0</HID>"
                        f"<CID>0</CID><DS_ID>0</DS_ID><VM_MAD>kvm</VM_MAD><TM_MAD>ssh</TM_MAD>"
                        f"<ACTION>{h.action}</ACTION></HISTORY>")  # fmt: skip
            mon = _tags(("CPU", "0.0"), ("MEMORY", vm.memory * 1024)) if vm.state == ACTIVE else ""
            vm.cache["short"] = (
                f"<VM>{_tags(('ID', vm.id), ('UID', vm.uid), ('GID', vm.gid), ('UNAME', vm.uname))}"
                f"{_tags(('GNAME', vm.gname), ('NAME', vm.name), ('LAST_POLL', vm.last_poll), ('STATE', vm.state))}"
                f"{_tags(('LCM_STATE', vm.lcm), ('RESCHED', vm.resched), ('STIME', vm.stime), ('ETIME', vm.etime))}"
                f"{_tags(('DEPLOY_ID', vm.deploy_id))}<TEMPLATE>{tmpl}</TEMPLATE><MONITORING>{mon}</MONITORING>"
                f"<USER_TEMPLATE>{user}</USER_TEMPLATE><HISTORY_RECORDS>{hist}</HISTORY_RECORDS></VM>"
            )
        return vm.cache["short"]

    def _head_xml(self, o: _Obj) -> str:
        return _tags(("ID", o.id), ("UID", o.uid), ("GID", o.gid), ("UNAME", o.uname), ("GNAME", o.gname),
                     ("NAME", o.name)) + _perms_xml(o.perms)  # fmt: skip

    def _template_xml(self, t: _Obj) -> str:
        body = f"<REGTIME>{t.regtime}</REGTIME><TEMPLATE>{_attrs_xml(t.attrs)}</TEMPLATE>"
        return f"<VMTEMPLATE>{self._head_xml(t)}{body}</VMTEMPLATE>"

    def _image_xml(self, img: _Obj) -> str:
        vms = [vm.id for vm in self._vms.values() if img.id in vm.images and vm.state != DONE]
        ids = "".join(f"<ID>{i}</ID>" for i in vms)
        return (
            f"<IMAGE>{self._head_xml(img)}"
            f"{_tags(('TYPE', 0), ('DISK_TYPE', 0), ('PERSISTENT', 0), ('REGTIME', img.regtime), ('MODTIME', 0))}"
            f"{_tags(('SOURCE', f'/var/lib/one/datastores/1/{img.id}'), ('PATH', ''), ('FORMAT', 'qcow2'))}"
            f"{_tags(('FS', ''), ('SIZE', img.size), ('STATE', 2 if vms else img.state), ('PREV_STATE', 1))}"
            f"{_tags(('RUNNING_VMS', len(vms)), ('CLONING_OPS', 0), ('CLONING_ID', -1), ('TARGET_SNAPSHOT', -1))}"
            f"{_tags(('DATASTORE_ID', 1), ('DATASTORE', 'default'))}<VMS>{ids}</VMS><CLONES/><APP_CLONES/>"
            f"<TEMPLATE>{_attrs_xml(img.attrs)}</TEMPLATE>"
            f"<SNAPSHOTS><ALLOW_ORPHANS>NO</ALLOW_ORPHANS><CURRENT_BASE>-1</CURRENT_BASE>"
            f"<NEXT_SNAPSHOT>0</NEXT_SNAPSHOT></SNAPSHOTS></IMAGE>"
        )

    # ---------------------------------------------------------------- API methods
    def _user_info(self, method: str, user: _User, p: list[Any]) -> str:
        uid = _arg(p, 1, int)
        target = user if uid == -1 else self._users.get(uid)
        if target is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting user [{uid}].", uid)
        if target is not user and not user.admin:
            raise OneError(AUTHORIZATION, f"[{method}] User [{user.id}] : Not authorized to perform USE USER [{uid}].")
        default = ""
        if self._default_quota:  # unset default limits are -2 (unlimited)
            lims = sorted((m, self._default_quota.get(m, -2.0)) for m in QUOTA_METRICS)
            default = "<VM>" + "".join(f"<{m}>{_num(v)}</{m}><{m}_USED>0</{m}_USED>" for m, v in lims) + "</VM>"
        groups = "".join(f"<ID>{g}</ID>" for g in target.groups)
        return (
            f"<USER><ID>{target.id}</ID><GID>{target.gid}</GID><GROUPS>{groups}</GROUPS>"
            f"{_tags(('GNAME', target.gname), ('NAME', target.name))}"
            f"<PASSWORD>{hashlib.sha256(target.password.encode()).hexdigest()}</PASSWORD>"
            f"<AUTH_DRIVER>core</AUTH_DRIVER><ENABLED>1</ENABLED><TEMPLATE/>"
            f"<DATASTORE_QUOTA/><NETWORK_QUOTA/>{self._quota_xml(target)}<IMAGE_QUOTA/>"
            f"<DEFAULT_USER_QUOTAS><DATASTORE_QUOTA/><NETWORK_QUOTA/><VM_QUOTA>{default}</VM_QUOTA><IMAGE_QUOTA/>"
            f"</DEFAULT_USER_QUOTAS></USER>"
        )

    def _user_quota(self, method: str, user: _User, p: list[Any]) -> int:
        """one.user.quota(session, uid, template): VM = [ VMS = .., CPU = .., ... ] sets those limits
        (-1: the default, -2: unlimited); other quota sections are accepted and not modelled. oneadmin only."""
        uid, text = _arg(p, 1, int), _arg(p, 2, str)
        target = self._users.get(uid)
        if target is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting user [{uid}].", uid)
        if not user.admin:
            why = f"[{method}] User [{user.id}] : Not authorized to perform ADMIN USER [{uid}]."
            raise OneError(AUTHORIZATION, why)
        for name, value in self._parse(method, text):
            if name == "VM" and isinstance(value, dict):
                for metric, limit in value.items():
                    if metric in QUOTA_METRICS and _is_num(limit, float):
                        target.quota[metric] = float(limit)
        return uid

    def _template_info(self, method: str, user: _User, p: list[Any]) -> str:
        tid = _arg(p, 1, int)
        tmpl = self._templates.get(tid)
        if tmpl is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting virtual machine template [{tid}].", tid)
        self._authorize(method, user, tmpl, "USE", "TEMPLATE")
        return self._template_xml(tmpl)

    def _templatepool_info(self, method: str, user: _User, p: list[Any]) -> str:
        rows = self._page(method, user, list(self._templates.values()), p)
        return "<VMTEMPLATE_POOL>" + "".join(self._template_xml(t) for t in rows) + "</VMTEMPLATE_POOL>"

    def _imagepool_info(self, method: str, user: _User, p: list[Any]) -> str:
        rows = self._page(method, user, list(self._images.values()), p)
        return "<IMAGE_POOL>" + "".join(self._image_xml(i) for i in rows) + "</IMAGE_POOL>"

    def _vnpool_info(self, method: str, user: _User, p: list[Any]) -> str:
        """one.vnpool.info(session, filter, start, end): VNET_POOL, elements in vnet_pool.xsd's order."""
        rows = self._page(method, user, list(self._networks.values()), p)
        return "<VNET_POOL>" + "".join(self._vnet_xml(n) for n in rows) + "</VNET_POOL>"

    def _vnet_xml(self, net: _Obj) -> str:
        used = len({i for vm in self._vms.values() if vm.state != DONE for n, i in vm.leases if n == net.id})
        return (
            f"<VNET>{self._head_xml(net)}<CLUSTERS><ID>0</ID></CLUSTERS>"
            f"{_tags(('BRIDGE', f'onebr{net.id}'), ('BRIDGE_TYPE', 'linux'), ('STATE', 1), ('PREV_STATE', 0))}"
            f"{_tags(('PARENT_NETWORK_ID', ''), ('VN_MAD', 'bridge'), ('PHYDEV', ''), ('VLAN_ID', ''))}"
            f"{_tags(('OUTER_VLAN_ID', ''), ('VLAN_ID_AUTOMATIC', 0), ('OUTER_VLAN_ID_AUTOMATIC', 0))}"
            f"{_tags(('USED_LEASES', used))}<VROUTERS/><UPDATED_VMS/><OUTDATED_VMS/><UPDATING_VMS/><ERROR_VMS/>"
            f"<TEMPLATE>{_attrs_xml(net.attrs)}</TEMPLATE><AR_POOL/></VNET>"
        )

    def _image_allocate(self, method: str, user: _User, p: list[Any]) -> int:
        """ImageAllocate: the image is LOCKED while the datastore copies PATH, then READY or ERROR.

        As the datastore drivers' downloader does, an http(s) PATH is fetched and, when the
        template gives MD5 or SHA1, the bytes must hash to them, else the image ends in ERROR.
        """
        text, ds_id = _arg(p, 1, str), _arg(p, 2, int)
        attrs = self._parse(method, text)
        name = _single(attrs, "NAME")
        if ds_id != 1:
            raise OneError(NO_EXISTS, f"[{method}] Error getting datastore [{ds_id}].", ds_id)
        if not name:
            raise OneError(ALLOCATE, f"[{method}] Error allocating a new image. No NAME in template.")
        with self._lock:
            taken = next((i for i in self._images.values() if i.name == name and i.uid == user.id), None)
            if taken is not None:
                raise OneError(ALLOCATE, f"[{method}] Error allocating a new image. "
                               f"NAME is already taken by IMAGE {taken.id}.")  # fmt: skip
            image_id = max(self._images, default=-1) + 1
            perms = _perms_from_umask(user.id, user.gid, user.umask)
            image = _Obj(image_id, name, user.id, user.name, user.gid, user.gname, perms, attrs,
                         regtime=int(self.now()), state=4)  # fmt: skip
            self._images[image_id] = image
        threading.Thread(target=self._copy_image, args=(image,), daemon=True, name="one-datastore").start()
        return image_id

    def _copy_image(self, image: _Obj) -> None:
        import ssl
        import urllib.request

        path = _single(image.attrs, "PATH") or ""
        try:
            context = ssl.create_default_context(cafile=self._download_ca)
            with urllib.request.urlopen(path, timeout=30, context=context) as answer:
                data = answer.read()
            for attr, algo in (("MD5", "md5"), ("SHA1", "sha1")):
                want = _single(image.attrs, attr)
                if want and hashlib.new(algo, data).hexdigest() != want.lower():
                    raise ValueError("Hash does not match")
            state, error = 1, None
        except (OSError, ValueError) as exc:
            state, error = 5, f"Error copying image in the datastore: {exc}"
        with self._lock:
            image.size = -(-len(data) // (1024 * 1024)) if state == 1 else 0
            image.state = state
            if error:
                stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(self.now()))
                image.attrs.append(("ERROR", f"{stamp} : {error}"))

    def _get_image(self, method: str, image_id: int) -> _Obj:
        image = self._images.get(image_id)
        if image is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting image [{image_id}].", image_id)
        return image

    def _image_info(self, method: str, user: _User, p: list[Any]) -> str:
        image = self._get_image(method, _arg(p, 1, int))
        self._authorize(method, user, image, "USE", "IMAGE")
        return self._image_xml(image)

    def _image_delete(self, method: str, user: _User, p: list[Any]) -> int:
        image_id = _arg(p, 1, int)
        image = self._get_image(method, image_id)
        self._authorize(method, user, image, "MANAGE", "IMAGE")
        del self._images[image_id]
        return image_id

    def _template_instantiate(self, method: str, user: _User, p: list[Any]) -> int:
        tid, name = _arg(p, 1, int), _arg(p, 2, str)
        hold = _arg(p, 3, bool) if len(p) > 3 else False
        extra = _arg(p, 4, str) if len(p) > 4 else ""
        if len(p) > 5:
            _arg(p, 5, bool)  # persistent copy of the disks: accepted, not modelled
        tmpl = self._templates.get(tid)
        if tmpl is None:
            raise OneError(NO_EXISTS, f"[{method}] Error getting virtual machine template [{tid}].", tid)
        self._authorize(method, user, tmpl, "USE", "TEMPLATE")
        attrs = copy.deepcopy(tmpl.attrs)
        if extra.strip():
            attrs = merge_attrs(attrs, self._parse(method, extra))  # oned replaces same-name attributes whole
        attrs = [a for a in attrs if a[0] != "TEMPLATE_ID"] + [("TEMPLATE_ID", str(tid))]
        attrs += [("NAME", name)] if name else [("TEMPLATE_NAME", tmpl.name)]
        return self._create_vm(method, user, attrs, hold).id

    def _vm_allocate(self, method: str, user: _User, p: list[Any]) -> int:
        attrs = self._parse(method, _arg(p, 1, str))
        return self._create_vm(method, user, attrs, _arg(p, 2, bool) if len(p) > 2 else False).id

    def _vm_info(self, method: str, user: _User, p: list[Any]) -> str:
        vm = self._get_vm(method, _arg(p, 1, int))
        self._authorize(method, user, vm, "USE", "VM")
        return self._vm_xml(vm)

    def _vm_update(self, method: str, user: _User, p: list[Any]) -> int:
        vm = self._get_vm(method, _arg(p, 1, int))
        text, kind = _arg(p, 2, str), _arg(p, 3, int) if len(p) > 3 else 0
        self._authorize(method, user, vm, "MANAGE", "VM")
        if kind not in (0, 1):
            raise OneError(XML_RPC_API, f"[{method}] Wrong update type")
        new = self._parse(method, text)
        vm.user_template = merge_attrs(vm.user_template, new) if kind == 1 else new
        vm.cache.clear()
        return vm.id

    def _vm_action(self, method: str, user: _User, p: list[Any]) -> int:
        action, vm_id = _arg(p, 1, str), _arg(p, 2, int)
        vm = self._get_vm(method, vm_id)
        self._authorize(method, user, vm, "ADMIN" if action in ("resched", "unresched") else "MANAGE", "VM")
        s, lcm, now, hard = vm.state, vm.lcm, self.now(), action.endswith("-hard")
        up = s == ACTIVE and lcm in (RUNNING, UNKNOWN)
        code = ACTION_IDS.get(action)
        if code is None:
            raise OneError(ACTION, f'[{method}] Action "{action}" is not supported')

        def wrong(error: str | None = None) -> OneError:
            error = error or f"This action is not available for state {vm.state_str}"
            return OneError(ACTION, f'[{method}] Error performing action "{action}": {error}')

        if action.startswith("terminate"):
            if (
                s in (INIT, PENDING, HOLD, SUSPENDED, STOPPED, POWEROFF, UNDEPLOYED, 10, 11)
                or up
                or (s == ACTIVE and (lcm in FAILURE_LCM or (lcm == SHUTDOWN and hard)))
            ):
                self._finish(vm, code, user)
            elif s != DONE:  # terminate of a DONE VM is a successful no-op in oned
                raise wrong(f"Could not terminate VM {vm.id}, wrong state {vm.state_str}.")
        elif action.startswith(("poweroff", "undeploy")):
            if not (up or (action.startswith("undeploy") and s == POWEROFF)):
                raise wrong()
            self._set(vm, POWEROFF if action.startswith("poweroff") else UNDEPLOYED, 0)
            if action.startswith("poweroff") and vm.history:
                vm.history[-1].retime = int(now)
                self._record(vm, code, user)
            else:
                self._close(vm, code, user)
        elif action in ("stop", "suspend"):
            if not (s == ACTIVE and lcm == RUNNING) and not (action == "stop" and s == SUSPENDED):
                raise wrong()
            self._set(vm, STOPPED if action == "stop" else SUSPENDED, 0)
            if action == "stop":
                self._close(vm, code, user)
            elif vm.history:
                self._record(vm, code, user)
        elif action in ("hold", "release"):
            if s != (PENDING if action == "hold" else HOLD):
                raise wrong()
            self._set(vm, HOLD if action == "hold" else PENDING, 0)
            vm.pending_since = now
            (self._pending.discard if action == "hold" else self._pending.add)(vm.id)
        elif action == "resume":
            if s not in (STOPPED, UNDEPLOYED, SUSPENDED, POWEROFF) and not (s == ACTIVE and lcm == UNKNOWN):
                raise wrong()
            if s != ACTIVE:  # RUNNING_* quota is taken again before resuming (VirtualMachineAction)
                request = {"RUNNING_VMS": 1, "RUNNING_CPU": vm.cpu, "RUNNING_MEMORY": vm.memory}
                error = self._quota_error(self._users[vm.uid], request)
                if error:
                    raise OneError(ACTION, f"[{method}] {error}")
            if s in (STOPPED, UNDEPLOYED):  # back to the scheduler
                self._set(vm, PENDING, 0)
                vm.pending_since = now
                self._pending.add(vm.id)
            elif s == ACTIVE:
                self._set(vm, ACTIVE, RUNNING)
            else:  # restart on the same host: the paused record is closed, a new one opened
                self._close(vm, code, user)
                self._deploy(vm, int(now))
        elif action.startswith("reboot"):
            if not (s == ACTIVE and lcm == RUNNING):
                raise wrong()
            vm.resched = 0
        elif action.endswith("resched"):
            if not (up or s == POWEROFF):
                raise wrong()
            vm.resched = int(action == "resched")
        vm.cache.clear()
        return vm.id

    def _vmpool_info(self, method: str, user: _User, p: list[Any]) -> str:
        state = _arg(p, 4, int)
        query = _arg(p, 5, str) if len(p) > 5 else ""
        if state < -2 or state > 11:
            raise OneError(XML_RPC_API, f"[{method}] Incorrect filter_flag, state")
        try:
            match = _search(query) if query else None
        except ValueError as exc:
            raise OneError(XML_RPC_API, f"[{method}] {exc}") from None

        def check(vm: _VM) -> bool:
            in_state = state == -2 or (state == -1 and vm.state != DONE) or vm.state == state
            return in_state and (match is None or match(self._vm_json(vm)))

        rows = self._page(method, user, list(self._vms.values()), p, check)
        render = self._vm_xml if method.endswith("infoextended") else self._vm_xml_short
        return "<VM_POOL>" + "".join(render(vm) for vm in rows) + "</VM_POOL>"

    def _vm_json(self, vm: _VM) -> dict[str, Any]:
        """The JSON document oned searches (VirtualMachine::to_json): repeated attributes become arrays."""

        def tree(attrs: list[Attr]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, val in attrs:
                out[name] = (
                    [*out[name], val] if isinstance(out.get(name), list) else ([out[name], val] if name in out else val)
                )
            return out

        body = {"ID": str(vm.id), "UID": str(vm.uid), "GID": str(vm.gid), "UNAME": vm.uname, "GNAME": vm.gname,
                "NAME": vm.name, "LAST_POLL": str(vm.last_poll), "STATE": str(vm.state), "LCM_STATE": str(vm.lcm),
                "PREV_STATE": str(vm.prev_state), "PREV_LCM_STATE": str(vm.prev_lcm), "RESCHED": str(vm.resched),
                "STIME": str(vm.stime), "ETIME": str(vm.etime), "DEPLOY_ID": vm.deploy_id,
                "TEMPLATE": tree(vm.template), "USER_TEMPLATE": tree(vm.user_template)}  # fmt: skip
        return {"VM": body}

    def _vmpool_accounting(self, method: str, user: _User, p: list[Any]) -> str:
        flag, t0, t1 = _arg(p, 1, int), _arg(p, 2, int), _arg(p, 3, int)
        if flag < -4:
            raise OneError(XML_RPC_API, f"[{method}] Incorrect filter_flag")
        out = []
        for vm in sorted(self._vms.values(), key=lambda v: v.id):  # ORDER BY vid, seq
            if not self._visible(user, vm.uid, vm.gid, vm.perms, flag):
                continue
            for h in vm.history:
                if (t0 == -1 or h.etime > t0 or h.etime == 0) and (t1 == -1 or h.stime < t1):
                    out.append(h.xml(vm.id, acct=True))
        return "<HISTORY_RECORDS>" + "".join(out) + "</HISTORY_RECORDS>"


# --------------------------------------------------------------------------------------------------
# one.vmpool.info{,extended} search argument (7.0 docs): "VM.KEY1=VALUE1&VM.KEY2=VALUE2", a MySQL
# JSON path without "$."; "*=V" searches the whole body; VALUE is a LIKE pattern wrapped in %..%
# (so it matches if it *contains* the value); % and _ are wildcards, \% and \_ literal.
# --------------------------------------------------------------------------------------------------
def _search(query: str) -> Callable[[dict[str, Any]], bool]:
    terms = []
    for part in query.split("&"):
        path, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"Wrong search format, expected KEY=VALUE: {part}")
        like = "".join(
            "." if tok == "_" else ".*" if tok == "%" else re.escape(tok[-1]) for tok in re.findall(r"\\.|.", value)
        )
        terms.append((path.strip(), re.compile(f".*{like}.*", re.DOTALL)))

    def select(node: Any, steps: list[str]) -> list[Any]:
        if not steps:
            return [node]
        m = re.fullmatch(r"([^\[]+)(?:\[(\*|\d+)\])?", steps[0])
        if not m or not isinstance(node, dict) or m.group(1) not in node:
            return []
        child, index = node[m.group(1)], m.group(2)
        if index is not None:
            items = child if isinstance(child, list) else [child]
            child = items if index == "*" else items[int(index) : int(index) + 1]
            return [x for item in child for x in select(item, steps[1:])]
        return select(child, steps[1:])

    def match(doc: dict[str, Any]) -> bool:
        for path, rx in terms:
            found = [doc] if path == "*" else select(doc, path.split("."))
            texts = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in found]
            if not any(rx.fullmatch(t) for t in texts):
                return False
        return True

    return match


def _arg(params: list[Any], i: int, kind: type) -> Any:
    """xmlrpc-c parameter typing: a missing or mistyped parameter is a fault, not a OpenNebula error."""
    if i >= len(params):
        raise Fault(-501, f"Not enough parameters: parameter {i} missing")
    value = params[i]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Fault(-501, f"Type mismatch: parameter {i} is not {kind.__name__}")
    return value


def _is_num(text: str | None, kind: type) -> bool:
    try:
        kind(text)
        return True
    except (TypeError, ValueError):
        return False


# ---- Separate process: CLI and spawn()
def _config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            config = json.load(fh)
    users = copy.deepcopy(config.get("users", DEFAULT_WORLD["users"]))
    for spec in args.user or []:
        name, _, password = spec.partition(":")
        found = next((u for u in users if u["name"] == name), None)
        if found:
            found["password"] = password
        else:
            gid = 200 + len(users)
            config.setdefault("groups", {})[str(gid)] = name
            users.append({"id": max(u["id"] for u in users) + 1, "name": name, "password": password, "gid": gid})
    config["users"] = users
    if args.deploy_delay is not None:
        config["deploy_delay"] = args.deploy_delay
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="OpenNebula 7.0 XML-RPC test peer (binds 127.0.0.1 only)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", action="append", help="NAME:PASSWORD (repeatable)")
    parser.add_argument("--config", help="JSON file: users, groups, templates, images, networks, ...")
    parser.add_argument("--deploy-delay", type=float, default=None)
    parser.add_argument("--clock-file", help="take the time from this file's first 8 bytes (a simulation's clock)")
    args = parser.parse_args(argv)
    peer = OpenNebulaPeer(port=args.port, **_config_from_args(args))
    if args.clock_file:
        peer.use_clock_file(args.clock_file)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {peer.start()}", flush=True)
    while not stop.wait(0.5):
        pass
    peer.stop()
    return 0


def spawn(*args: str, timeout: float = 10.0) -> tuple[str, subprocess.Popen[str]]:
    """Start the peer as a subprocess (extra CLI ``args``); return (url, process) once it is READY.
    Stop it with ``proc.terminate()`` (SIGTERM: clean exit, status 0)."""
    fd, log = tempfile.mkstemp(prefix="one-peer-", suffix=".log")  # a file, not a pipe nobody drains
    try:
        cmd = [sys.executable, __file__, "--port", "0", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fd, text=True)
    finally:
        os.close(fd)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    with open(log, encoding="utf-8", errors="replace") as fh:
        os.unlink(log)
        if not line or not line[0].startswith("READY "):
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError(f"OpenNebula peer did not become ready: {(line or [''])[0]!r} {fh.read()[-2000:]}")
    return line[0].split()[1], proc


if __name__ == "__main__":
    sys.exit(main())
