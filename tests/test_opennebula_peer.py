"""Conformance tests for the OpenNebula 7.0 XML-RPC peer (tests/peers/opennebula.py).

Driven with the real pyone client and with raw xmlrpc.client for exact reply tuples.  Every XML
body is parsed with pyone's bindings (generated from OpenNebula's XSDs) and its element order is
checked against the constructor order of the matching generated class, i.e. the XSD sequence.
"""

from __future__ import annotations

import base64
import inspect
import os
import signal
import struct
import threading
import time
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Iterator
from typing import Any

import pyone
import pytest
from peers.opennebula import OpenNebulaPeer, parse_template, spawn
from pyone.bindings import supbind

ATLAS, CMS, ADMIN = "atlas:secret", "cms:secret", "oneadmin:opennebula"
SMALL = 'CPU="0.5"\nMEMORY="512"\nNIC=[NETWORK="atlas-net",NETWORK_UNAME="oneadmin"]\n'


@pytest.fixture
def peer() -> Iterator[OpenNebulaPeer]:
    with OpenNebulaPeer() as p:
        yield p


@pytest.fixture
def one(peer: OpenNebulaPeer) -> Any:
    return pyone.OneServer(peer.url, session=ATLAS)


@pytest.fixture
def raw(peer: OpenNebulaPeer) -> Any:
    return xmlrpc.client.ServerProxy(peer.url)


def _binding(first: list[str]) -> type:
    """The generated class whose constructor starts with `first` (its parameter order is the XSD sequence)."""
    for obj in vars(supbind).values():
        if isinstance(obj, type) and list(inspect.signature(obj.__init__).parameters)[1 : len(first) + 1] == first:
            return obj
    raise LookupError(first)


def assert_xsd_order(elem: ET.Element, cls: type) -> None:
    expected = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "gds_collector_", "kwargs_")]
    tags = [child.tag for child in elem]
    assert all(t in expected for t in tags), set(tags) - set(expected)
    positions = [expected.index(t) for t in tags]
    assert positions == sorted(positions), tags


def body(reply: list[Any]) -> Any:
    """The value of a successful reply, which oned always sends as [True, value, 0]."""
    assert reply[0] is True and reply[2] == 0 and len(reply) == 3, reply
    return reply[1]


def failure(reply: list[Any], code: int, message: str, resp_id: int = -1) -> None:
    assert reply == [False, message, code, resp_id, -1]


def vm_state(one: Any, vm_id: int) -> tuple[int, int]:
    vm = one.vm.info(vm_id)
    return vm.STATE, vm.LCM_STATE


# ------------------------------------------------------------------------------------------ wire shapes
def test_success_is_a_three_tuple(raw: Any) -> None:
    assert raw.one.system.version(ATLAS) == [True, "7.0.0", 0]


@pytest.mark.parametrize("session", ["atlas:wrong", "nobody:secret", "atlas", ""])
def test_authentication_failure_is_a_five_tuple(raw: Any, peer: OpenNebulaPeer, session: str) -> None:
    failure(raw.one.vm.info(session, 0), 0x100, "[one.vm.info] User couldn't be authenticated, aborting call.")
    failure(raw.one.vmpool.infoextended(session, -2, -1, -1, -1), 0x100,
            "[one.vmpool.infoextended] User couldn't be authenticated, aborting call.")  # fmt: skip
    with pytest.raises(pyone.OneAuthenticationException):
        pyone.OneServer(peer.url, session=session).vmpool.info(-2, -1, -1, -1)


def test_no_exists(raw: Any, one: Any) -> None:
    failure(raw.one.vm.info(ATLAS, 4242), 0x400, "[one.vm.info] Error getting virtual machine [4242].", 4242)
    failure(raw.one.vm.action(ATLAS, "terminate", 7), 0x400, "[one.vm.action] Error getting virtual machine [7].", 7)
    failure(raw.one.template.info(ATLAS, 9, False, False), 0x400,
            "[one.template.info] Error getting virtual machine template [9].", 9)  # fmt: skip
    failure(raw.one.user.info(ATLAS, 55), 0x400, "[one.user.info] Error getting user [55].", 55)
    with pytest.raises(pyone.OneNoExistsException):
        one.vm.info(4242)


def test_protocol_faults(raw: Any) -> None:
    with pytest.raises(xmlrpc.client.Fault) as missing:
        raw.one.vm.teleport(ATLAS, 1)
    assert missing.value.faultCode == -506
    with pytest.raises(xmlrpc.client.Fault):
        raw.one.vm.info(ATLAS, "0")  # a string where oned's signature wants an int
    with pytest.raises(xmlrpc.client.Fault):
        raw.one.template.instantiate(ATLAS, 0, "x", 0, "", False)  # int where a boolean is required


# ------------------------------------------------------------------------------------------ lifecycle
def test_pending_then_running_after_the_deploy_delay(one: Any, peer: OpenNebulaPeer) -> None:
    vm_id = one.template.instantiate(0, "wn-1", False, "", False)
    vm = one.vm.info(vm_id)
    assert (vm.STATE, vm.LCM_STATE, vm.DEPLOY_ID, vm.ETIME) == (1, 0, "", 0)
    assert vm.TEMPLATE["NIC"]["IP"] == "10.10.0.1" and vm.TEMPLATE["TEMPLATE_ID"] == "0"
    assert vm.HISTORY_RECORDS.HISTORY == []
    peer.set_time_offset(1)
    vm = one.vm.info(vm_id)
    assert (3, 3, f"one-{vm_id}") == (vm.STATE, vm.LCM_STATE, vm.DEPLOY_ID)
    (hist,) = vm.HISTORY_RECORDS.HISTORY
    assert (hist.SEQ, hist.ETIME, hist.HOSTNAME) == (0, 0, "peer-host")
    assert vm.STIME <= hist.STIME <= vm.STIME + 1


def test_hold_and_release(one: Any, peer: OpenNebulaPeer) -> None:
    vm_id = one.template.instantiate(0, "", True, "", False)
    assert f"atlas-wn-{vm_id}" == one.vm.info(vm_id).NAME
    peer.set_time_offset(5)
    assert vm_state(one, vm_id) == (2, 0)
    assert one.vm.action("release", vm_id) == vm_id
    assert vm_state(one, vm_id) == (1, 0)
    peer.set_time_offset(10)
    assert vm_state(one, vm_id) == (3, 3)


def test_terminate_is_done_and_hidden_from_state_minus_one(one: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    keep, gone = one.vm.allocate(SMALL, False), one.vm.allocate(SMALL, False)
    assert one.vm.action("terminate-hard", gone) == gone
    vm = one.vm.info(gone)
    assert (vm.STATE, vm.LCM_STATE) == (6, 0) and vm.ETIME >= vm.STIME > 0
    assert vm.HISTORY_RECORDS.HISTORY[-1].ACTION == 28 and vm.HISTORY_RECORDS.HISTORY[-1].ETIME > 0
    assert [v.ID for v in one.vmpool.infoextended(-3, -1, -1, -1).VM] == [keep]
    assert sorted(v.ID for v in one.vmpool.infoextended(-3, -1, -1, -2).VM) == [keep, gone]
    assert [v.ID for v in one.vmpool.info(-3, -1, -1, 6).VM] == [gone]
    assert one.vm.action("terminate", gone) == gone  # oned: terminating a DONE VM is a no-op success


def test_actions_in_the_wrong_state(raw: Any, peer: OpenNebulaPeer) -> None:
    vm_id = int(body(raw.one.vm.allocate(ATLAS, SMALL, False)))
    failure(
        raw.one.vm.action(ATLAS, "poweroff", vm_id),
        0x800,
        '[one.vm.action] Error performing action "poweroff": This action is not available for state PENDING',
    )
    failure(raw.one.vm.action(ATLAS, "explode", vm_id), 0x800, '[one.vm.action] Action "explode" is not supported')
    peer.set_state(vm_id, 3, 2)  # ACTIVE/BOOT
    failure(
        raw.one.vm.action(ATLAS, "terminate", vm_id),
        0x800,
        f'[one.vm.action] Error performing action "terminate": Could not terminate VM {vm_id}, wrong state BOOT.',
    )
    peer.set_state(vm_id, 3, 3)
    assert raw.one.vm.action(ATLAS, "poweroff", vm_id) == [True, vm_id, 0]
    failure(
        raw.one.vm.action(ATLAS, "suspend", vm_id),
        0x800,
        '[one.vm.action] Error performing action "suspend": This action is not available for state POWEROFF',
    )
    assert raw.one.vm.action(ATLAS, "resume", vm_id) == [True, vm_id, 0]
    peer.set_state(vm_id, 3, 36)  # BOOT_FAILURE: terminate deletes it
    assert raw.one.vm.action(ATLAS, "terminate", vm_id) == [True, vm_id, 0]
    assert "<STATE>6</STATE>" in body(raw.one.vm.info(ATLAS, vm_id))


def test_undeploy_resume_opens_a_new_history_record(one: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    vm_id = one.vm.allocate(SMALL, False)
    one.vm.action("undeploy", vm_id)
    assert vm_state(one, vm_id) == (9, 0)
    one.vm.action("resume", vm_id)
    records = one.vm.info(vm_id).HISTORY_RECORDS.HISTORY
    assert [(h.SEQ, h.ACTION, h.ETIME > 0) for h in records] == [(0, 5, True), (1, 0, False)]


# ------------------------------------------------------------------------------------------ permissions
def test_other_users_vm_is_not_authorized(raw: Any, one: Any) -> None:
    vm_id = one.vm.allocate(SMALL, False)
    failure(raw.one.vm.info(CMS, vm_id), 0x200, f"[one.vm.info] User [3] : Not authorized to perform USE VM [{vm_id}].")
    failure(raw.one.vm.action(CMS, "terminate", vm_id), 0x200,
            f"[one.vm.action] User [3] : Not authorized to perform MANAGE VM [{vm_id}].")  # fmt: skip
    failure(raw.one.vm.update(CMS, vm_id, 'A="b"', 1), 0x200,
            f"[one.vm.update] User [3] : Not authorized to perform MANAGE VM [{vm_id}].")  # fmt: skip
    assert body(raw.one.vm.info(ADMIN, vm_id)).startswith(f"<VM><ID>{vm_id}</ID>")
    assert "<VM>" not in body(raw.one.vmpool.infoextended(CMS, -2, -1, -1, -1))
    assert f"<ID>{vm_id}</ID>" in body(raw.one.vmpool.infoextended(ADMIN, -2, -1, -1, -1))


def test_group_filters() -> None:
    users = [
        {"id": 0, "name": "oneadmin", "password": "x", "gid": 0},
        {"id": 5, "name": "alice", "password": "a", "gid": 100, "umask": "137"},
        {"id": 6, "name": "bob", "password": "b", "gid": 100, "umask": "137"},
        {"id": 7, "name": "carol", "password": "c", "gid": 100, "umask": "177"},  # oned's default umask
    ]
    with OpenNebulaPeer(users=users) as peer:
        ids = {
            u: pyone.OneServer(peer.url, session=f"{u}:{u[0]}").vm.allocate(SMALL, False)
            for u in ("alice", "bob", "carol")
        }
        alice = pyone.OneServer(peer.url, session="alice:a")

        def listed(flag: int) -> list[int]:
            return sorted(v.ID for v in alice.vmpool.infoextended(flag, -1, -1, -1).VM)

        assert listed(-3) == [ids["alice"]]
        assert listed(-1) == [ids["alice"], ids["bob"]]  # carol's VM has no GROUP_U
        assert listed(-4) == sorted(ids.values())  # oned's -4 filter is gid only
        assert listed(6) == [ids["bob"]] and listed(7) == []  # a filter >= 0 is a user id
        perms = alice.vm.info(ids["alice"]).PERMISSIONS
        assert (perms.OWNER_U, perms.OWNER_M, perms.GROUP_U, perms.GROUP_M, perms.OTHER_U) == (1, 1, 1, 0, 0)


# ------------------------------------------------------------------------------------------ quotas
def test_quota_failure_uses_oned_wording() -> None:
    users = [{"id": 2, "name": "atlas", "password": "secret", "gid": 100, "quota": {"VMS": 2, "CPU": 5}}]
    with OpenNebulaPeer(users=[{"id": 0, "name": "oneadmin", "password": "x", "gid": 0}, *users]) as peer:
        raw = xmlrpc.client.ServerProxy(peer.url)
        assert body(raw.one.template.instantiate(ATLAS, 1, "a", False, "", False)) == 0  # CPU 4
        failure(
            raw.one.template.instantiate(ATLAS, 1, "b", False, "", False),
            0x200,
            "[one.template.instantiate] User [2] : user [2] limit of 5 reached for CPU quota in VM.",
        )
        assert body(raw.one.vm.allocate(ATLAS, SMALL, False)) == 1
        failure(raw.one.vm.allocate(ATLAS, SMALL, False), 0x200,
                "[one.vm.allocate] User [2] : user [2] limit of 2 reached for VMS quota in VM.")  # fmt: skip
        assert body(raw.one.vm.allocate("oneadmin:x", SMALL, False)) == 2  # oneadmin has no quota
        with pytest.raises(pyone.OneAuthorizationException):
            pyone.OneServer(peer.url, session=ATLAS).vm.allocate(SMALL, False)


def test_oneadmin_sets_a_users_quota_and_others_may_not(tmp_path: Any) -> None:
    users = [{"id": 2, "name": "atlas", "password": "secret", "gid": 100, "quota": {"VMS": 2, "CPU": 5}}]
    with OpenNebulaPeer(users=[{"id": 0, "name": "oneadmin", "password": "x", "gid": 0}, *users]) as peer:
        raw = xmlrpc.client.ServerProxy(peer.url)
        failure(raw.one.user.quota(ATLAS, 2, 'VM = [ VMS = "9" ]'), 0x200,
                "[one.user.quota] User [2] : Not authorized to perform ADMIN USER [2].")  # fmt: skip
        assert body(raw.one.user.quota("oneadmin:x", 2, 'VM = [ VMS = "3", CPU = "-2" ]')) == 2
        assert body(raw.one.template.instantiate(ATLAS, 1, "a", False, "", False)) == 0
        assert body(raw.one.template.instantiate(ATLAS, 1, "b", False, "", False)) == 1  # CPU now unlimited
        assert body(raw.one.vm.allocate(ATLAS, SMALL, False)) == 2
        failure(raw.one.vm.allocate(ATLAS, SMALL, False), 0x200,
                "[one.vm.allocate] User [2] : user [2] limit of 3 reached for VMS quota in VM.")  # fmt: skip
        clock = tmp_path / "clock"
        clock.write_bytes(struct.pack("<d", 2_000_000_000.0))
        peer.use_clock_file(str(clock))
        assert peer.now() == 2_000_000_000.0
        with clock.open("r+b") as fh:  # the simulation moves its clock a day on, in place
            fh.write(struct.pack("<d", 2_000_086_400.0))
        assert peer.now() == 2_000_086_400.0


def test_quota_used_follows_live_vms(one: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    quota = one.user.info(-1).VM_QUOTA.VM[0]
    assert (quota.VMS, quota.CPU, quota.MEMORY, quota.VMS_USED, quota.SYSTEM_DISK_SIZE) == (
        "100",
        "400",
        "819200",
        "0",
        "-1",
    )
    a = one.template.instantiate(0, "a", False, "", False)
    b = one.template.instantiate(1, "b", False, "", False)
    one.vm.action("poweroff", b)
    q = one.user.info(-1).VM_QUOTA.VM[0]
    assert (q.VMS_USED, q.CPU_USED, q.MEMORY_USED, q.SYSTEM_DISK_SIZE_USED) == ("2", "5", "20480", "61440")
    assert (q.RUNNING_VMS_USED, q.RUNNING_CPU_USED, q.RUNNING_MEMORY_USED) == ("1", "1", "4096")
    one.vm.action("terminate", a)
    one.vm.action("terminate", b)
    q = one.user.info(-1).VM_QUOTA.VM[0]
    assert (q.VMS_USED, q.CPU_USED, q.MEMORY_USED, q.RUNNING_VMS_USED) == ("0", "0", "0", "0")
    user = one.user.info(-1)
    assert (user.ID, user.NAME, user.GID, user.GNAME, user.GROUPS.ID) == (2, "atlas", 100, "atlas", [100])


# ------------------------------------------------------------------------------------------ templates & data
def test_user_template_update_merge_and_replace(one: Any, raw: Any) -> None:
    vm_id = one.vm.allocate(SMALL + 'WLCG_FLEET="atlas-1"\nOWNER="ops"\n', False)
    assert dict(one.vm.info(vm_id).USER_TEMPLATE) == {"WLCG_FLEET": "atlas-1", "OWNER": "ops"}
    assert one.vm.update(vm_id, 'OWNER="dev"\nLABELS="a,b"', 1) == vm_id
    assert dict(one.vm.info(vm_id).USER_TEMPLATE) == {"LABELS": "a,b", "OWNER": "dev", "WLCG_FLEET": "atlas-1"}
    one.vm.update(vm_id, "<TEMPLATE><ONLY>this</ONLY><V><K>1</K></V></TEMPLATE>", 0)
    assert dict(one.vm.info(vm_id).USER_TEMPLATE) == {"ONLY": "this", "V": {"K": "1"}}
    failure(raw.one.vm.update(ATLAS, vm_id, 'A="b"', 2), 0x1000, "[one.vm.update] Wrong update type")


def test_large_base64_user_data_round_trips(one: Any, raw: Any) -> None:
    user_data = base64.b64encode(os.urandom(100 * 1024)).decode()
    extra = (
        f'# comment\nCONTEXT = [\n  USER_DATA = "{user_data}",\n  USER_DATA_ENCODING = "base64" ]\nFLEET = atlas-1\n'
    )
    vm_id = one.template.instantiate(0, "big", False, extra, False)
    ctx = one.vm.info(vm_id).TEMPLATE["CONTEXT"]
    assert ctx["USER_DATA"] == user_data and ctx["USER_DATA_ENCODING"] == "base64"
    assert "NETWORK" not in ctx  # oned's merge replaces a same-name attribute (the template's CONTEXT) whole
    assert one.vm.info(vm_id).USER_TEMPLATE["FLEET"] == "atlas-1"
    extended = one.vmpool.infoextended(-3, -1, -1, -1).VM[0]
    assert extended.TEMPLATE["CONTEXT"]["USER_DATA"] == user_data
    short = body(raw.one.vmpool.info(ATLAS, -3, -1, -1, -1))
    assert user_data[:100] not in short and "CONTEXT" not in short  # vmpool.info has the short body


def test_names_and_values_with_markup_characters(one: Any, raw: Any) -> None:
    tricky = "a<b & \"c\" 'd' > é 日本"
    text = (
        SMALL + f'NAME="wn 1 é"\nNOTE="{tricky.replace(chr(34), chr(92) + chr(34))}"\nVEC=[X="{chr(60)}&{chr(62)}"]\n'
    )
    vm_id = one.vm.allocate(text, False)
    vm = one.vm.info(vm_id)
    assert (vm.NAME, vm.USER_TEMPLATE["NOTE"], vm.USER_TEMPLATE["VEC"]["X"]) == ("wn 1 é", tricky, "<&>")
    one.vm.update(vm_id, f"<TEMPLATE><NOTE>{tricky.replace('&', '&amp;').replace('<', '&lt;')}</NOTE></TEMPLATE>", 1)
    assert one.vmpool.infoextended(-3, -1, -1, -1).VM[0].USER_TEMPLATE["NOTE"] == tricky
    for bad in ("a<b", "x&y", 'q"r', "wlcg:atlas"):
        failure(
            raw.one.vm.allocate(ATLAS, SMALL + f'NAME="{bad.replace(chr(34), chr(92) + chr(34))}"', False),
            0x2000,
            f"[one.vm.allocate] Invalid NAME, char '{next(c for c in bad if c in '<&:' + chr(34))}' is not allowed",
        )


def test_template_syntax() -> None:
    attrs = parse_template('# c\nA = "x \\" y\nz"\nB=plain value\nv = [ k1 = "1", K2 = two ]\nC=""\n')
    assert attrs == [("A", 'x " y\nz'), ("B", "plain value"), ("V", {"K1": "1", "K2": "two"}), ("C", "")]
    with pytest.raises(ValueError, match="line 2"):
        parse_template('A="1"\n= 2\n')


def test_invalid_vm_templates(raw: Any) -> None:
    failure(raw.one.vm.allocate(ATLAS, 'CPU="1"', False), 0x2000,
            "[one.vm.allocate] MEMORY attribute must be a positive integer value.")  # fmt: skip
    failure(raw.one.vm.allocate(ATLAS, 'CPU="1"\nMEMORY="64"\nNIC=[NETWORK="atlas-net"]', False), 0x2000,
            "[one.vm.allocate] User 2 does not own a network with name: atlas-net . "
            "Set NETWORK_UNAME or NETWORK_UID of owner in NIC.")  # fmt: skip
    reply = raw.one.vm.allocate(ATLAS, 'CPU="1"\nMEMORY=[', False)
    assert reply[:3] == [False, reply[1], 0x2000] and reply[1].startswith("[one.vm.allocate] Parse error")


# ------------------------------------------------------------------------------------------ pools
def test_infoextended_search_filter(one: Any, raw: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    ids = [
        one.vm.allocate(SMALL + f'NAME="wn-{fleet}"\nWLCG_FLEET="{fleet}"', False)
        for fleet in ("atlas-1", "atlas-10", "x_1")
    ]

    def search(query: str) -> list[int]:
        return sorted(v.ID for v in one.vmpool.infoextended(-2, -1, -1, -1, query).VM)

    # documented: the value is wrapped in % ... %, i.e. "contains"; % and _ are wildcards
    assert search("VM.USER_TEMPLATE.WLCG_FLEET=atlas-1") == ids[:2]
    assert search("VM.USER_TEMPLATE.WLCG_FLEET=atlas-1&VM.NAME=wn-atlas-10") == [ids[1]]
    assert search("VM.USER_TEMPLATE.WLCG_FLEET=x\\_1") == [ids[2]]
    assert search("VM.USER_TEMPLATE.WLCG_FLEET=a_las%0") == [ids[1]]
    assert search("VM.TEMPLATE.NIC[*].IP=10.10.0.2") == [ids[1]]
    assert search("VM.USER_TEMPLATE.NOPE=x") == [] and search("*=atlas-10") == [ids[1]]
    one.vm.action("terminate", ids[0])
    assert search("VM.USER_TEMPLATE.WLCG_FLEET=atlas-1") == [ids[1]]  # state -1 still applies
    assert raw.one.vmpool.infoextended(ATLAS, -2, -1, -1, -1, "nonsense")[:3:2] == [False, 0x1000]


def test_pagination_and_order() -> None:
    with OpenNebulaPeer() as peer:
        ids = peer.add_vms("atlas", SMALL, 7)
        one = pyone.OneServer(peer.url, session=ATLAS)

        def page(start: int, end: int) -> list[int]:
            return [v.ID for v in one.vmpool.infoextended(-2, start, end, -1).VM]

        assert page(-1, -1) == ids[::-1]  # API_LIST_ORDER=DESC, oned's default
        assert page(0, -3) == ids[6:3:-1] and page(3, -3) == ids[3:0:-1] and page(6, -3) == [ids[0]]
        assert page(ids[2], ids[4]) == ids[4:1:-1]  # end >= -1: an ID range, not an offset
        assert page(ids[5], -1) == ids[:4:-1]
    with OpenNebulaPeer(list_order="ASC") as peer:
        ids = peer.add_vms("atlas", SMALL, 4)
        one = pyone.OneServer(peer.url, session=ATLAS)
        assert [v.ID for v in one.vmpool.info(-2, 1, -2, -1).VM] == ids[1:3]


def test_accounting_records_open_and_closed(one: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    closed = one.vm.allocate(SMALL, False)
    one.vm.info(closed)  # deploys it
    peer.set_time_offset(100)
    one.vm.action("terminate", closed)
    peer.set_time_offset(200)
    running = one.vm.allocate(SMALL, False)
    one.vm.info(running)
    records = one.vmpool.accounting(-3, -1, -1).HISTORY
    got = [(h.OID, h.ETIME == 0, h.ACTION, h.VM.ID) for h in records]
    assert got == [(closed, False, 27, closed), (running, True, 0, running)]
    t_close = records[0].ETIME
    assert records[0].STIME + 100 <= t_close <= records[1].STIME - 100
    assert records[0].VM.STATE == 6 and records[1].VM.STATE == 3
    after_close = one.vmpool.accounting(-3, t_close + 10, -1).HISTORY
    assert [h.OID for h in after_close] == [running]  # open records always overlap
    before_running = one.vmpool.accounting(-3, -1, records[1].STIME).HISTORY
    assert [h.OID for h in before_running] == [closed]
    assert pyone.OneServer(peer.url, session=CMS).vmpool.accounting(-2, -1, -1).HISTORY == []


def test_imagepool_and_templatepool(one: Any) -> None:
    (image,) = one.imagepool.info(-2, -1, -1).IMAGE
    assert (image.NAME, image.UNAME, image.TEMPLATE["WLCG_ENDORSED_ID"]) == ("cernvm-4", "oneadmin", "cernvm-4-2024.06")
    one.template.instantiate(0, "", False, "", False)
    assert one.imagepool.info(-2, -1, -1).IMAGE[0].RUNNING_VMS == 1
    names = {t.NAME: t for t in one.templatepool.info(-2, -1, -1).VMTEMPLATE}
    assert names["atlas-wn"].TEMPLATE["VCPU"] == "2" and names["atlas-large"].TEMPLATE["MEMORY"] == "16384"
    assert one.templatepool.info(-3, -1, -1).VMTEMPLATE == []  # owned by oneadmin
    assert one.template.info(1, False, False).TEMPLATE["CPU"] == "4"


# ------------------------------------------------------------------------------------------ XSD conformance
def test_every_body_parses_with_the_bindings_in_xsd_order(raw: Any, peer: OpenNebulaPeer) -> None:
    peer.set_deploy_delay(0)
    vm_id = body(raw.one.template.instantiate(ATLAS, 0, "x", False, 'WLCG_FLEET="f"\nLABELS="l"', False))
    raw.one.vm.action(ATLAS, "poweroff", vm_id)
    full_vm, vm_cls = body(raw.one.vm.info(ATLAS, vm_id)), supbind.VM
    tmpl_cls = _binding(["AUTOMATIC_DS_REQUIREMENTS", "AUTOMATIC_NIC_REQUIREMENTS"])
    vm_hist_cls = _binding(
        ["OID", "SEQ", "HOSTNAME", "HID", "CID", "STIME", "ETIME", "VM_MAD", "TM_MAD", "DS_ID", "PLAN_ID"]
    )
    for text, cls in [(full_vm, vm_cls), *((ET.tostring(v, "unicode"), vm_cls) for v in
                      ET.fromstring(body(raw.one.vmpool.infoextended(ATLAS, -2, -1, -1, -1))))]:  # fmt: skip
        elem = ET.fromstring(text)
        assert_xsd_order(elem, cls)
        assert_xsd_order(elem.find("TEMPLATE"), tmpl_cls)
        for hist in elem.iter("HISTORY"):
            assert_xsd_order(hist, vm_hist_cls)
        parsed = pyone.bindings.parseString(text.encode())
        assert (parsed.ID, parsed.NAME, parsed.STATE, parsed.USER_TEMPLATE["WLCG_FLEET"]) == (vm_id, "x", 8, "f")
    short_pool = body(raw.one.vmpool.info(ATLAS, -2, -1, -1, -1))
    short = ET.fromstring(short_pool)[0]
    assert_xsd_order(short, _binding(["ID", "UID", "GID", "UNAME", "GNAME", "NAME", "LAST_POLL"]))
    assert_xsd_order(short.find("TEMPLATE"), _binding(["CPU", "MEMORY", "VCPU", "DISK", "NIC", "GRAPHICS"]))
    assert [c.tag for c in short.find("USER_TEMPLATE")] == ["LABELS"]
    assert pyone.bindings.parseString(short_pool.encode()).VM[0].TEMPLATE["NIC"]["IP"] == "10.10.0.1"
    acct = body(raw.one.vmpool.accounting(ATLAS, -2, -1, -1))
    for hist in ET.fromstring(acct):
        assert_xsd_order(hist, supbind.HISTORY)
        assert_xsd_order(hist.find("VM"), supbind.VM)  # acct.xsd refers to the VM element
    assert pyone.bindings.parseString(acct.encode()).HISTORY[0].ACTION == 19
    user = body(raw.one.user.info(ATLAS, -1))
    assert_xsd_order(ET.fromstring(user), supbind.USER)
    assert_xsd_order(ET.fromstring(user).find("VM_QUOTA/VM"), _binding(["CLUSTER_IDS", "CPU", "CPU_USED"]))
    assert pyone.bindings.parseString(user.encode()).VM_QUOTA.VM[0].VMS_USED == "1"
    for method, cls in (("imagepool", supbind.IMAGE), ("templatepool", supbind.VMTEMPLATE)):
        xml = body(getattr(raw.one, method).info(ATLAS, -2, -1, -1))
        for elem in ET.fromstring(xml):
            assert_xsd_order(elem, cls)
        assert pyone.bindings.parseString(xml.encode())


# ------------------------------------------------------------------------------------------ scale & process
def test_twenty_concurrent_allocations(peer: OpenNebulaPeer) -> None:
    results: list[int] = []
    errors: list[BaseException] = []

    def allocate(i: int) -> None:
        try:
            results.append(pyone.OneServer(peer.url, session=ATLAS).template.instantiate(0, f"c{i}", False, "", False))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=allocate, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == [] and sorted(results) == list(range(20))
    assert peer.calls()["one.template.instantiate"] == 20
    ips = {pyone.OneServer(peer.url, session=ATLAS).vm.info(i).TEMPLATE["NIC"]["IP"] for i in results}
    assert len(ips) == 20


def test_two_thousand_vms(peer: OpenNebulaPeer) -> None:
    peer.add_vms("atlas", SMALL + 'WLCG_FLEET="big"', 2000)
    started = time.perf_counter()
    reply = peer.dispatch("one.vmpool.infoextended", [ATLAS, -2, -1, -1, -1])
    assert time.perf_counter() - started < 1.0
    assert body(reply).count("<VM><ID>") == 2000
    pool = pyone.OneServer(peer.url, session=ATLAS).vmpool.infoextended(
        -2, 0, -500, -1, "VM.USER_TEMPLATE.WLCG_FLEET=big"
    )
    assert [v.ID for v in pool.VM] == list(range(1999, 1499, -1))


def test_subprocess_peer_with_users_and_sigterm() -> None:
    url, proc = spawn("--user", "alice:pw", "--deploy-delay", "0")
    try:
        raw = xmlrpc.client.ServerProxy(url)
        assert raw.one.system.version("alice:pw") == [True, "7.0.0", 0]
        assert raw.one.system.version(ATLAS)[0] is True
        vm_id = body(raw.one.vm.allocate("alice:pw", SMALL, False))
        assert "<STATE>3</STATE>" in body(raw.one.vm.info("alice:pw", vm_id))
        assert raw.peer.calls()["one.vm.allocate"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        if proc.stdout:
            proc.stdout.close()
