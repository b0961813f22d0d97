"""Cloud failures that must neither leak nor lose: secrets in error texts, answers that are not the
API's, answers lost after the cloud made instances. Real peers; faults only at the wire."""

from __future__ import annotations

import copy
import itertools
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from peers.faultproxy import Fault, FaultProxy
from peers.opennebula import AUTHORIZATION, DEFAULT_WORLD, INTERNAL, NO_EXISTS, OpenNebulaPeer

from conftest import Result, Run, World, ec2_profile, one_profile, openstack_profile, write_profiles

ONE_PASSWORD = "Neb-Pa55word-7e1"  # distinctive, so no ordinary word stands for it in an assertion
SESSION = f"atlas:{ONE_PASSWORD}"
EC2_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}'
    "</Message></Error></Errors><RequestID>r-1</RequestID></Response>"
)
# Fixtures: profile 'osk' on the OpenStack peer, and Nova behind a fault proxy as a region of its own.
HTML = "<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>Please log in.</body></html>"


def ledger_rows(world: World, table: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(world.state / "ledger.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        db.close()


def shows_none_of(result: Result, *secrets: str) -> bool:
    return not any(s in result.out or s in result.err for s in secrets)


def from_the_nth(n: int, match: str) -> Callable[[str, str, bytes], bool]:
    """A matcher for requests holding `match`, from the n-th such request on (1: every one)."""
    count = itertools.count(1)
    return lambda method, path, body: (match in f"{method} {path}" or match.encode() in body) and next(count) >= n


@pytest.fixture
def one(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenNebulaPeer]:
    """An OpenNebula peer whose user 'atlas' has a distinctive password, and profile 'one' for it."""
    users = copy.deepcopy(DEFAULT_WORLD["users"])
    next(u for u in users if u["name"] == "atlas")["password"] = ONE_PASSWORD
    with OpenNebulaPeer(users=users) as peer:
        write_profiles(world, {"one": one_profile(peer)})  # type: ignore[arg-type]
        monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", ONE_PASSWORD)
        yield peer


@pytest.fixture
def one_proxy(world: World, one: OpenNebulaPeer) -> Iterator[FaultProxy]:
    """Profile 'one' reaches the peer through a fault proxy."""
    with FaultProxy(one.url.removesuffix("/RPC2")) as proxy:
        write_profiles(world, {"one": one_profile(one, endpoint=proxy.url + "/RPC2")})  # type: ignore[arg-type]
        yield proxy


ONE_LAUNCH = ("launch", "0", "--allow-unendorsed", "--credential", "none", "-p", "one")


# Secrets


@pytest.mark.parametrize(
    ("code", "exit_code"), [(AUTHORIZATION, 4), (NO_EXISTS, 6), (INTERNAL, 6), (0x4000, 6), (0x8000, 6)]
)
def test_an_opennebula_fault_quoting_the_session_never_shows_it(
    run: Run, one: OpenNebulaPeer, code: int, exit_code: int
) -> None:
    """Whatever its code, and even past the length at which a message is cut, the session string goes."""
    method = "one.vmpool.infoextended"
    one.fail(method, code, f"[{method}] User [2] : Not authorized; request: {method}({{session}}, -1, 0, -500)")
    result = run("instance", "list")
    assert result.code == exit_code and result.err.startswith("error: profile 'one': list VMs")
    assert "(secret)" in result.err and shows_none_of(result, ONE_PASSWORD, SESSION)
    # A message is cut at 300 characters: some copy of the session straddles the cut, whatever comes first.
    one.fail(method, code, " ".join(["{session}"] * 20), times=2)
    cut = run("instance", "list")
    assert cut.code == exit_code and "(secret) (secret)" in cut.err and shows_none_of(cut, "Neb-Pa", "atlas:N")
    debug = run("instance", "list", "--debug")
    assert debug.code == exit_code and "Traceback" in debug.err and shows_none_of(debug, ONE_PASSWORD)


def test_a_refused_launch_records_no_secret_in_the_ledger(run: Run, world: World, one: OpenNebulaPeer) -> None:
    one.fail("one.template.instantiate", AUTHORIZATION, "Not authorized to perform CREATE VM: {session}", times=2)
    result = run(*ONE_LAUNCH, "-n", "2", "--fleet", "refused", "-o", "json")
    assert result.code == 4 and shows_none_of(result, ONE_PASSWORD)
    [launch] = ledger_rows(world, "launches")
    assert launch["state"] == "failed" and "(secret)" in launch["error"] and ONE_PASSWORD not in launch["error"]


def test_ec2_errors_echoing_the_secret_or_the_request_never_show_them(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = moto_ec2.secret_key
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", secret)
    with FaultProxy(moto_ec2.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_ec2, endpoint_url=proxy.url)})
        xml = {"Content-Type": "text/xml;charset=UTF-8"}
        echo = EC2_ERROR.format(code="InvalidParameterValue", message=f"key {secret} in {{request}}")
        proxy.always(Fault("status", status=400, headers=xml, body=echo, match="Action=DescribeInstances"))
        for debug in ((), ("--debug",)):
            result = run("instance", "list", "--all", *debug)
            assert result.code == 6 and "EC2 said InvalidParameterValue (HTTP 400): key (secret)" in result.err
            assert shows_none_of(result, secret)
        proxy.clear()
        refused = EC2_ERROR.format(code="AuthFailure", message=f"signature of {secret} does not match")
        proxy.plan(Fault("status", status=401, headers=xml, body=refused, match="Action=DescribeInstances"))
        result = run("instance", "list", "--all")
        assert result.code == 4 and "EC2 refused the credentials (AuthFailure" in result.err
        assert shows_none_of(result, secret)


def test_user_data_quoted_by_a_refusing_cloud_is_not_shown_nor_recorded(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.pilot-token-that-must-never-show"
    script = world.root / "pilot.sh"
    script.write_text(f"#!/bin/sh\nexport PILOT_TOKEN={token}\nexec /opt/pilot/start\n")
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    with FaultProxy(moto_ec2.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_ec2, endpoint_url=proxy.url, flavor="t3.micro")})
        # A cloud that quotes the offending line of the user-data back.
        line = EC2_ERROR.format(code="InvalidUserData.Malformed", message=f"line 2: export PILOT_TOKEN={token} ?")
        proxy.plan(Fault("status", status=400, headers={"Content-Type": "text/xml"}, body=line,
                         match="Action=RunInstances"))  # fmt: skip
        result = run("launch", "ami-03cf127a", "--allow-unendorsed", "--credential", "none", "-p", "aws",
                     "--user-data", str(script), "--fleet", "quoted")  # fmt: skip
    assert result.code == 6 and "InvalidUserData.Malformed (HTTP 400): line 2: (secret) ?" in result.err, result.err
    assert shows_none_of(result, token, "pilot-token")
    [launch] = ledger_rows(world, "launches")
    assert launch["state"] == "failed" and "(secret)" in launch["error"] and "pilot-token" not in launch["error"]


@pytest.mark.openstack
def test_keystone_errors_echoing_the_request_never_show_the_secret(
    run: Run, world: World, openstack_peer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"]
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", secret)
    keystone = openstack_peer.appcred["OS_AUTH_URL"].rsplit("/v3", 1)[0]
    with FaultProxy(keystone, preserve_host=True) as proxy:
        write_profiles(world, {"osk": openstack_profile(openstack_peer, auth_url=proxy.url + "/v3")})
        json = {"Content-Type": "application/json"}
        for status, exit_code in ((400, 6), (401, 4), (500, 6)):
            body = '{"error": {"code": CODE, "message": "Invalid input: {body}", "title": "Bad"}}'
            body = body.replace("CODE", str(status))
            proxy.plan(Fault("status", status=status, headers=json, body=body, match="POST /v3/auth/tokens"))
            result = run("instance", "list", "--debug")
            assert result.code == exit_code and "profile 'osk'" in result.err, result.err
            assert shows_none_of(result, secret)
            assert exit_code == 4 or '"secret": "(secret)"' in result.err  # shown, the secret taken out


# Answers that are not the API's


NOT_EC2 = {
    "html": ({"Content-Type": "text/html"}, HTML),
    "empty": ({"Content-Type": "text/xml"}, ""),
    "garbage": ({"Content-Type": "text/xml"}, "<DescribeInstancesResponse><reservationSet><item"),
    "other root": ({"Content-Type": "text/xml"}, '<?xml version="1.0"?><ListBucketResult/>'),
}


@pytest.mark.parametrize("kind", list(NOT_EC2))
def test_an_ec2_endpoint_answering_something_else_is_exit_6_not_an_empty_result(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    headers, body = NOT_EC2[kind]
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    with FaultProxy(moto_ec2.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_ec2, endpoint_url=proxy.url, flavor="t3.micro")})
        proxy.always(Fault("status", status=200, headers=headers, body=body))
        for command in (("instance", "list"), ("fleet", "list"), ("instance", "list", "--all", "-o", "json")):
            result = run(*command)
            assert result.code == 6 and result.err.startswith("error: profile 'aws': "), (command, result.err)
            assert result.out == "" and result.err.count("\n") == 1
            assert "the answer is not the EC2 API's" in result.err
        launch = run("launch", "ami-03cf127a", "--allow-unendorsed", "--credential", "none", "-p", "aws")
        assert launch.code == 6 and "profile 'aws'" in launch.err  # not "no such image" (5), not launched (0)


def test_an_endorsed_launch_behind_an_html_page_is_exit_6_not_a_refused_image(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    with FaultProxy(moto_ec2.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_ec2, endpoint_url=proxy.url, flavor="t3.micro")})
        proxy.always(Fault("status", status=200, headers={"Content-Type": "text/html"}, body=HTML))
        result = run("launch", endorsed["first"], "-p", "aws", "--credential", "none")
    assert result.code == 6 and "list images: the answer is not the EC2 API's (HTTP 200, text/html" in result.err


NOT_ONE = {
    "html": ({"Content-Type": "text/html"}, HTML),
    "empty": ({"Content-Type": "text/xml"}, ""),
    "garbage": ({"Content-Type": "text/xml"}, "<methodResponse><params><param><value><array"),
    "other root": ({"Content-Type": "text/xml"}, '<?xml version="1.0"?><methodCall/>'),
    "not oned's": ({"Content-Type": "text/xml"}, "<methodResponse><params><param><value><string>hello"
                   "</string></value></param></params></methodResponse>"),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(NOT_ONE))
def test_an_opennebula_endpoint_answering_something_else_is_exit_6(run: Run, one_proxy: FaultProxy, kind: str) -> None:
    headers, body = NOT_ONE[kind]
    one_proxy.always(Fault("status", status=200, headers=headers, body=body))
    for command in (("instance", "list"), ("fleet", "list"), ("launch", *ONE_LAUNCH[1:])):
        result = run(*command)
        assert result.code == 6 and "profile 'one'" in result.err, (command, result.err)
        assert "the answer is not the OpenNebula API's" in result.err and "Traceback" not in result.err


@pytest.mark.openstack
def test_a_nova_answering_html_is_exit_6(run: Run, world: World, osk: Any, nova_behind_proxy: Any) -> None:
    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region)})
    proxy.always(Fault("status", status=200, headers={"Content-Type": "text/html"}, body=HTML, match="GET"))
    result = run("instance", "list")
    assert result.code == 6 and "profile 'osk': list servers: the answer is not the OpenStack API's" in result.err


@pytest.mark.openstack
@pytest.mark.parametrize(("status", "code", "said"), [(403, 4, "OpenStack refused it (HTTP 403)"), (500, 6, "500")])
def test_a_nova_refusing_a_listing_says_so_not_that_it_is_not_the_api(
    run: Run, world: World, osk: Any, nova_behind_proxy: Any, status: int, code: int, said: str
) -> None:
    """Server listings are read as Nova's JSON: an HTTP error is still the error it is."""
    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region)})
    body = b'{"computeFault": {"code": %d, "message": "refused by the test"}}' % status
    proxy.always(Fault("status", status=status, headers={"Content-Type": "application/json"}, body=body,
                       match="/servers/detail"))  # fmt: skip
    result = run("instance", "list")
    assert result.code == code and "profile 'osk': list servers" in result.err and said in result.err, result.err
    assert "not the OpenStack API's" not in result.err


@pytest.mark.openstack
def test_a_token_keystoneauth_renewed_mid_run_stays_out_of_errors(
    world: World, osk: Any, nova_behind_proxy: Any
) -> None:
    """fleet maintain keeps its providers for an hour: keystoneauth logs in again when a token expires, and
    an error that quotes the request (its X-Auth-Token) must not show the new token either."""
    from wlcgcloud.config import load_config
    from wlcgcloud.errors import WlcgError
    from wlcgcloud.providers import connect

    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region)})
    provider = connect(load_config().profile("osk"))
    provider.instances()  # logged in: the first token
    first = provider.conn.session.get_token()  # type: ignore[attr-defined]
    provider.conn.session.auth.invalidate()  # type: ignore[attr-defined]  # as when it expires
    proxy.always(Fault("status", status=500, headers={"Content-Type": "application/json"},
                       body='{"computeFault": {"code": 500, "message": "bad token {header:X-Auth-Token}"}}',
                       match="/servers/detail"))  # fmt: skip
    with pytest.raises(WlcgError) as caught:
        provider.instances()
    renewed = provider.conn.session.get_token()  # type: ignore[attr-defined]
    assert renewed != first and len(renewed) > 20
    text = f"{caught.value.message} {caught.value.hint}"
    assert renewed not in text and first not in text and "(secret)" in text, text


# Answers lost after the cloud acted


def test_lost_answers_and_a_failed_look_up_leave_an_open_intent_that_the_same_launch_adopts(
    run: Run, world: World, one: OpenNebulaPeer, one_proxy: FaultProxy
) -> None:
    """12 VMs made, 4 answers lost, the look-up for them failing: 8 recorded, 4 owed; a re-run adopts all."""
    one_proxy.plan(*[Fault("lose_answer", match="one.template.instantiate")] * 4)
    # The look-up before the calls answers; every one after them fails (a proxy in front of oned, say).
    one_proxy.always(Fault("status", status=502, match=from_the_nth(2, "one.vmpool.infoextended")))
    launch = (*ONE_LAUNCH, "-n", "12", "--fleet", "lost", "-o", "json")
    result = run(*launch)
    assert result.code == 7, result.err
    assert "8 of 12 instances made; up to 4 more instance(s) may exist" in result.err
    assert "Re-run the same launch to adopt them" in result.err
    data = result.json()
    assert isinstance(data, dict) and (data["launched"], data["uncertain"], data["failed"]) == (8, 4, 0)
    [intent] = ledger_rows(world, "launches")
    assert (intent["state"], intent["uncertain"], intent["requested"]) == ("intent", 4, 12)
    recorded = [r["id"] for r in ledger_rows(world, "instances")]
    assert len(set(recorded)) == 8 and {r["fleet"] for r in ledger_rows(world, "instances")} == {"lost"}

    one_proxy.clear()
    again = run(*launch)
    assert again.code == 0, again.err
    data = again.json()
    assert isinstance(data, dict) and (data["resumed"], data["launched"], data["failed"]) == (12, 0, 0)
    listed = run("instance", "list", "--fleet", "lost", "-o", "json").json()
    on_the_cloud = {vm["id"] for vm in listed}  # type: ignore[union-attr]
    rows = ledger_rows(world, "instances")
    assert len(on_the_cloud) == 12 and sorted(r["id"] for r in rows) == sorted(on_the_cloud)  # all, none twice
    assert [r["id"] for r in rows][:8] == recorded
    assert [(r["state"], r["uncertain"]) for r in ledger_rows(world, "launches")] == [("adopted", 0), ("launched", 0)]
    assert one.calls()["one.template.instantiate"] == 12  # nothing launched twice


def test_every_answer_lost_is_exit_6_and_fleet_reconcile_adopts_what_was_made(
    run: Run, world: World, one: OpenNebulaPeer, one_proxy: FaultProxy
) -> None:
    one_proxy.always(Fault("lose_answer", match="one.template.instantiate"))
    one_proxy.always(Fault("reset", match=from_the_nth(2, "one.vmpool.infoextended")))
    result = run(*ONE_LAUNCH, "-n", "3", "--fleet", "unseen")
    assert result.code == 6 and "Traceback" not in result.err
    assert "fleet unseen: 3 requested; started 0, up to 3 may exist unseen" in result.err
    assert "profile 'one': up to 3 instance(s) may exist that no answer showed" in result.err
    assert "Re-run the same launch to adopt them (or run 'wlcgcloud fleet reconcile')." in result.err
    assert ledger_rows(world, "instances") == []
    [intent] = ledger_rows(world, "launches")
    assert (intent["state"], intent["uncertain"]) == ("intent", 3)
    one_proxy.clear()
    reconciled = run("fleet", "reconcile", "-o", "json")
    assert reconciled.code == 0, reconciled.err
    assert {r["fleet"] for r in reconciled.json()} == {"unseen"} and len(reconciled.json()) == 3  # type: ignore[union-attr,arg-type]
    assert len({r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == "unseen"}) == 3
    assert [(r["state"], r["uncertain"]) for r in ledger_rows(world, "launches")] == [("adopted", 0)]


def test_ec2_an_answer_lost_then_one_that_is_not_ec2s_is_owed_then_adopted(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RunInstances reaches EC2 and its answer is lost; botocore's retry meets a web page, so it stops."""
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    fleet = "lost-" + uuid.uuid4().hex[:8]
    with FaultProxy(moto_ec2.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_ec2, endpoint_url=proxy.url, flavor="t3.micro")})
        proxy.plan(Fault("lose_answer", match="Action=RunInstances"),
                   Fault("status", status=200, headers={"Content-Type": "text/html"}, body=HTML,
                         match="Action=RunInstances"))  # fmt: skip
        launch = ("launch", "ami-03cf127a", "--allow-unendorsed", "--credential", "none", "-p", "aws", "-n", "3",
                  "--fleet", fleet, "-o", "json")  # fmt: skip
        result = run(*launch)
        assert result.code == 6 and "up to 3 instance(s) may exist" in result.err, result.err
        assert proxy.forwarded("Action=RunInstances") == 1
        [intent] = ledger_rows(world, "launches")
        assert (intent["state"], intent["uncertain"]) == ("intent", 3)
        again = run(*launch)
    assert again.code == 0, again.err
    data = again.json()
    assert isinstance(data, dict) and (data["resumed"], data["launched"]) == (3, 0)
    assert len({r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == fleet}) == 3
    assert [r["state"] for r in ledger_rows(world, "launches")] == ["adopted", "launched"]
    run("fleet", "terminate", fleet, "--yes")


@pytest.mark.openstack
def test_nova_made_the_servers_but_the_answer_and_the_look_up_are_lost(
    run: Run, world: World, osk: Any, nova_behind_proxy: Any
) -> None:
    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region, flavor="m1.tiny")})
    fleet = "lost-" + uuid.uuid4().hex[:8]
    proxy.plan(Fault("lose_answer", match="POST /v2.1/servers"))
    # The look-up for an earlier attempt's servers answers; the one after the POST does not.
    proxy.always(Fault("status", status=500, match=from_the_nth(2, "GET /v2.1/servers/detail?tags=")))
    launch = ("launch", osk.image_id, "--allow-unendorsed", "--credential", "none", "-p", "osk", "-n", "2",
              "--fleet", fleet, "-o", "json")  # fmt: skip
    try:
        result = run(*launch)
        assert result.code == 6 and "up to 2 instance(s) may exist that no answer showed" in result.err, result.err
        assert proxy.forwarded("POST /v2.1/servers") == 1
        [intent] = ledger_rows(world, "launches")
        assert (intent["state"], intent["uncertain"]) == ("intent", 2)
        proxy.clear()
        again = run(*launch)
        assert again.code == 0, again.err
        data = again.json()
        assert isinstance(data, dict) and (data["resumed"], data["launched"]) == (2, 0)
        assert proxy.forwarded("POST /v2.1/servers") == 1  # nothing made twice
        assert len({r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == fleet}) == 2
        assert [r["state"] for r in ledger_rows(world, "launches")] == ["adopted", "launched"]
    finally:
        run("fleet", "terminate", fleet, "--yes")
