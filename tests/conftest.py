"""Every test runs in a throwaway world: HOME, XDG dirs, config, state and keyring in tmp_path."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keyring
import keyring.backends.fail
import pytest

from wlcgcloud.__main__ import main

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from keyring_backend import FileKeyring  # noqa: E402

if TYPE_CHECKING:
    from peers.faultproxy import FaultProxy

CLEARED_PREFIXES = ("AWS_", "OS_", "ONE_", "WLCGCLOUD_", "WLCG_TEST_", "BEARER_TOKEN", "X509_", "PYTHON_KEYRING", "PG")


@dataclass
class World:
    """The temporary directories a test runs in."""

    root: Path
    home: Path
    config: Path
    state: Path
    keyring_file: Path

    def secrets(self) -> dict[str, str]:
        """What the test keyring holds: {"wlcgcloud/<profile>": secret}."""
        if not self.keyring_file.exists():
            return {}
        return dict(json.loads(self.keyring_file.read_text()))

    def env(self) -> dict[str, str]:
        """The environment for a subprocess of the installed command, in the same world."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(TESTS)
        env["PYTHON_KEYRING_BACKEND"] = "keyring_backend.FileKeyring"
        return env


@pytest.fixture(autouse=True)
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in list(os.environ):
        if name.startswith(CLEARED_PREFIXES):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    w = World(tmp_path, home, home / ".config/wlcgcloud/config.toml", tmp_path / "state", tmp_path / "keyring.json")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local/state"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", str(tmp_path / "etc-xdg"))
    monkeypatch.setenv("WLCGCLOUD_STATE_DIR", str(w.state))
    monkeypatch.setenv("WLCG_TEST_KEYRING", str(w.keyring_file))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.chdir(tmp_path)  # clouds.yaml is also searched in the current directory
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring(w.keyring_file))
    yield w
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring() -> Iterator[None]:
    """A headless machine: keyring has only its `fail` backend."""
    keyring.set_keyring(keyring.backends.fail.Keyring())
    yield


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


Run = Callable[..., Result]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """Run the real command in-process: `run("profile", "list", input="...")`."""

    def _run(*args: str, input: str = "") -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(input))
        code = main(list(args))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


# ----------------------------------------------------------------------------- cloud peers
#
# Real protocol peers on 127.0.0.1, started once per test session: moto_server for EC2, the
# real OpenStack of ../shared/peers/openstack (brought up by dev/test, see README), and the
# OpenNebula XML-RPC peer of tests/peers/opennebula.py. Tests reach them only through
# profiles in the throwaway config, exactly as a user would.

OSK_DIR = Path(os.environ.get("OSK_DIR", "/tmp/osk"))


def read_env_file(path: Path) -> dict[str, str]:
    """`export A=b` lines of the OpenStack peer's openrc files."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.removeprefix("export ").strip()
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value.strip("'\"")
    return out


@pytest.fixture(scope="session")
def moto_ec2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from peers import ec2

    server = ec2.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moto_own(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A moto server of one test module: quota checks must not depend on what other modules left running."""
    from peers import ec2

    server = ec2.start(tmp_path_factory.mktemp("moto-own") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_unchecked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A second moto server that does not check signatures (see peers.ec2.start: EBS CompleteSnapshot)."""
    from peers import ec2

    server = ec2.start(tmp_path_factory.mktemp("moto-unchecked") / "moto.log", check_credentials=False)
    yield server
    server.stop()


@dataclass
class OpenStackPeer:
    """The running OpenStack peer: its credentials files, read at session start."""

    appcred: dict[str, str]
    password: dict[str, str]
    admin: dict[str, str]
    image_id: str
    image_sha512: str


@pytest.fixture(scope="session")
def openstack_peer() -> OpenStackPeer:
    import urllib.request

    appcred = OSK_DIR / "appcred.env"
    hint = "Start it with 'sudo ../shared/peers/openstack/up.sh' (dev/test does this when run as root)."
    if not appcred.exists():
        pytest.fail(f"the OpenStack peer is not set up ({appcred} is missing). {hint}", pytrace=False)
    creds = read_env_file(appcred)
    try:
        urllib.request.urlopen(creds["OS_AUTH_URL"], timeout=5).read()
    except OSError as exc:
        pytest.fail(f"the OpenStack peer does not answer at {creds['OS_AUTH_URL']} ({exc}). {hint}", pytrace=False)
    image = read_env_file(OSK_DIR / "image.env")
    return OpenStackPeer(
        appcred=creds,
        password=read_env_file(OSK_DIR / "openrc"),
        admin=read_env_file(OSK_DIR / "admin-openrc"),
        image_id=image["OSK_IMAGE_ID"],
        image_sha512=image["OSK_IMAGE_SHA512"],
    )


def write_profiles(world: World, profiles: dict[str, dict[str, object]]) -> None:
    """Write a config.toml holding exactly these profiles."""
    import tomlkit

    doc = tomlkit.document()
    table = tomlkit.table()
    for name, settings in profiles.items():
        table[name] = {k: v for k, v in settings.items() if v is not None}
    doc["profiles"] = table
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text(tomlkit.dumps(doc))
    world.config.chmod(0o600)


def ec2_profile(server: object, **extra: object) -> dict[str, object]:
    return {
        "provider": "ec2",
        "region": "eu-west-1",
        "endpoint_url": server.url,  # type: ignore[attr-defined]
        "access_key_id": server.access_key,  # type: ignore[attr-defined]
        "timeout": 10,
        **extra,
    }


def openstack_sdk(creds: dict[str, str]) -> Any:
    """An openstacksdk connection for test setup (the admin, or the operator behind our back)."""
    import openstack

    if creds.get("OS_AUTH_TYPE") == "v3applicationcredential":
        auth = {
            "auth_url": creds["OS_AUTH_URL"],
            "application_credential_id": creds["OS_APPLICATION_CREDENTIAL_ID"],
            "application_credential_secret": creds["OS_APPLICATION_CREDENTIAL_SECRET"],
        }
        kind = "v3applicationcredential"
    else:
        auth = {
            "auth_url": creds["OS_AUTH_URL"],
            "username": creds["OS_USERNAME"],
            "password": creds["OS_PASSWORD"],
            "project_name": creds["OS_PROJECT_NAME"],
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        }
        kind = "password"
    return openstack.connect(
        auth_type=kind, auth=auth, region_name="RegionOne", load_yaml_config=False, load_envvars=False
    )


def openstack_profile(peer: OpenStackPeer, **extra: object) -> dict[str, object]:
    return {
        "provider": "openstack",
        "auth_url": peer.appcred["OS_AUTH_URL"],
        "application_credential_id": peer.appcred["OS_APPLICATION_CREDENTIAL_ID"],
        "region": peer.appcred.get("OS_REGION_NAME", "RegionOne"),
        "network": "osk-net",
        "timeout": 20,
        **extra,
    }


def create_instances(world: World, profile: str, image: str, flavor: str, count: int, fleet: str) -> list[str]:
    """Create `count` fleet instances through our provider layer (what `launch` will call); their ids."""
    from wlcgcloud.config import load_config
    from wlcgcloud.providers import connect
    from wlcgcloud.providers.base import LaunchRequest

    provider = connect(load_config(world.config).profile(profile))
    tags = {"wlcg:fleet": fleet, "wlcg:profile": profile, "wlcg:experiment": "atlas"}
    made = provider.create(LaunchRequest(f"{fleet}-vm", image, flavor, count, b"#cloud-config\n{}\n", tags))
    return [i.id for i in made]


INSTANCE_KEYS = {
    "id",
    "name",
    "fleet",
    "profile",
    "provider",
    "state",
    "provider_state",
    "flavor",
    "vcpus",
    "memory_mb",
    "image",
    "launched_at",
    "addresses",
}


@dataclass
class OneNebulaPeer:
    """The OpenNebula XML-RPC peer process: its URL, and its `peer.*` control calls."""

    url: str
    control: Any  # xmlrpc.client.ServerProxy: peer.set_state, peer.calls, peer.add_vm, ...


@pytest.fixture(scope="session")
def one_peer() -> Iterator[OneNebulaPeer]:
    import xmlrpc.client

    from peers import opennebula

    url, proc = opennebula.spawn()
    yield OneNebulaPeer(url, xmlrpc.client.ServerProxy(url, allow_none=True))
    proc.terminate()
    proc.wait(10)


def one_profile(peer: OneNebulaPeer, **extra: object) -> dict[str, object]:
    return {
        "provider": "opennebula",
        "endpoint": peer.url,
        "username": "atlas",
        "vm_template": "atlas-wn",
        "timeout": 10,
        **extra,
    }


@pytest.fixture
def endorsed(run: Run, world: World) -> dict[str, Any]:
    """A subscribed list whose first image has the bytes of the OpenStack peer's osk-dummy image."""
    from peers import gridca

    ca = gridca.make_ca("wlcgcloud Test CA")
    endorser = gridca.make_endorser(ca, "atlas-endorser")
    anchors = world.root / "certificates"
    gridca.install_ca(anchors, ca)
    document = gridca.image_list(endorser, ca)
    images = [entry["hv:image"] for entry in document["hv:imagelist"]["hv:images"]]
    peer_image = OSK_DIR / "image.env"  # the OpenStack peer's image, when it is set up here
    if peer_image.exists():
        images[0]["sl:checksum:sha512"] = read_env_file(peer_image)["OSK_IMAGE_SHA512"]
    signed = gridca.sign(world.root / "lists", document, endorser)
    trust = ("--trust-anchors", str(anchors), "--endorser", gridca.slash(endorser.name))
    result = run("image", "subscribe", str(signed), *trust)
    assert result.code == 0, result.err
    return {"first": images[0]["dc:identifier"], "second": images[1]["dc:identifier"], "ca": ca,
            "endorser": endorser, "anchors": anchors}  # fmt: skip


def own_marked_ami(client: Any, endorsed_id: str) -> str:
    """An AMI of the profile's own account, marked as carrying `endorsed_id`."""
    instance = client.run_instances(ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=1, MaxCount=1)
    own = client.create_image(InstanceId=instance["Instances"][0]["InstanceId"], Name="atlas-wn-1")["ImageId"]
    client.create_tags(Resources=[own], Tags=[{"Key": "wlcg:endorsed-id", "Value": endorsed_id}])
    return str(own)


@pytest.fixture
def one_endorsed(endorsed: dict[str, Any]) -> Iterator[Any]:
    """An OpenNebula peer holding one of the user's own images, marked as the first endorsed image."""
    from peers.opennebula import DEFAULT_WORLD, OpenNebulaPeer

    images = [{"id": 0, "name": "atlas-wn-endorsed", "owner": "atlas", "size": 1,
               "template": f'WLCG_ENDORSED_ID="{endorsed["first"]}"\n'}]  # fmt: skip
    tiny = {"id": 7, "name": "atlas-tiny", "owner": "oneadmin",
            "template": 'VCPU="1"\nMEMORY="2048"\nDISK=[IMAGE="cernvm-4",IMAGE_UNAME="oneadmin"]\n'}  # fmt: skip
    with OpenNebulaPeer(images=images, templates=[*DEFAULT_WORLD["templates"], tiny]) as peer:
        yield peer


@pytest.fixture
def three_clouds(
    world: World,
    endorsed: dict[str, Any],
    moto_ec2: Any,
    openstack_peer: OpenStackPeer,
    one_endorsed: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """Three profiles, one per cloud, each holding a copy of the first endorsed image."""
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {
        "aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas"),
        "osk": openstack_profile(openstack_peer, flavor="m1.large", experiment="atlas"),
        "one": one_profile(one_endorsed, vm_template="atlas-wn", experiment="atlas"),  # type: ignore[arg-type]
    })  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    return {"aws": moto_ec2, "osk": openstack_peer, "one": one_endorsed}


# ----------------------------------------------------------------------------- OpenStack fixtures


@pytest.fixture
def osk(world: World, openstack_peer: OpenStackPeer, monkeypatch: pytest.MonkeyPatch) -> Iterator[OpenStackPeer]:
    write_profiles(world, {"osk": openstack_profile(openstack_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    yield openstack_peer


@pytest.fixture
def nova_behind_proxy(osk: OpenStackPeer) -> Iterator[tuple[FaultProxy, str]]:
    """A fault proxy in front of Nova, published in the catalog as its own region.

    Our code finds Nova through the Keystone catalog, as it would on any cloud: so the test
    registers a region whose compute endpoint is the proxy, and the profile names that region.
    """
    from peers.faultproxy import FaultProxy

    admin = openstack_sdk(osk.admin)
    region = "WlcgFaults"
    if admin.identity.find_region(region) is None:
        admin.identity.create_region(id=region)
    public = [e for e in admin.identity.endpoints(interface="public") if e.region_id != region]
    nova = next(e for e in public if ":8774" in e.url)
    with FaultProxy(nova.url.split("/v2.1")[0], preserve_host=True) as proxy:
        # Nova through the proxy; the other services of the region point at the real ones.
        made = [
            admin.identity.create_endpoint(
                service_id=e.service_id,
                interface="public",
                url=proxy.url + "/v2.1" if e is nova else e.url,
                region_id=region,
            )
            for e in public
        ]
        try:
            yield proxy, region
        finally:
            for endpoint in made:
                admin.identity.delete_endpoint(endpoint)


# ----------------------------------------------------------------------------- PostgreSQL
#
# A real PostgreSQL server (tests/peers/postgres.py) for the ledger's PostgreSQL backend: TLS
# required, scram-sha-256 passwords. Started once per session, when a test first asks for it;
# every test gets a database and an owner role of its own.

if TYPE_CHECKING:
    from peers.postgres import Database, PostgresServer


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    from peers.postgres import PostgresServer

    try:
        server = PostgresServer.start()
    except Exception as exc:  # a missing server is a failure to explain, never a skip
        reason = f"could not start the PostgreSQL peer: {type(exc).__name__}: {exc}"
    else:
        reason = ""
    if reason:  # outside the except: the reason is shown once, not under the exception it came from
        pytest.fail(reason, pytrace=False)
    yield server
    server.stop()


@pytest.fixture
def pg_database(postgres_server: PostgresServer) -> Database:
    """A fresh database, owned by a fresh role with its own password, on the session's server."""
    return postgres_server.new_database()


# ----------------------------------------------------------------------------- fleet maintain


def write_spec(world: World, text: str, name: str = "fleet.toml") -> Path:
    path = world.root / name
    path.write_text(text)
    return path


def fleet_name(prefix: str = "vac") -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"  # the peers are the session's: every test's fleets are its own


def spec_text(fleet: str, image: str, target: int, places: dict[str, str], **maintain: str) -> str:
    """A fleet spec: no credential, this target over these [profiles.NAME] bodies, [maintain] keys as given
    (create_per_cycle 100% unless said otherwise)."""
    lines = [f'fleet = "{fleet}"', f'image = "{image}"', 'credential = "none"', f"target = {target}", ""]
    for name, body in places.items():
        lines += [f"[profiles.{name}]", body, ""]
    lines += ["[maintain]", *(f'{k} = "{v}"' for k, v in {"create_per_cycle": "100%", **maintain}.items())]
    return "\n".join(lines) + "\n"


def alive(run: Run, fleet: str) -> dict[str, list[str]]:
    """The ids of the fleet's pending and running instances, by profile, as `instance list` shows them."""
    listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
    assert isinstance(listed, list)
    out: dict[str, list[str]] = {}
    for i in listed:
        if i["state"] in ("pending", "running"):
            out.setdefault(i["profile"], []).append(i["id"])
    return out


@pytest.fixture
def two_clouds(
    world: World, endorsed: dict[str, Any], moto_ec2: Any, one_endorsed: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """EC2 (moto) and OpenNebula (the peer), each holding a copy of the first endorsed image, and a profile
    'broken' on the same peer whose VM template does not exist (it can never create)."""
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {
        "aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas"),
        "one": one_profile(one_endorsed, vm_template="atlas-wn", experiment="atlas"),  # type: ignore[arg-type]
        "broken": one_profile(one_endorsed, vm_template="no-such-template", experiment="atlas"),  # type: ignore[arg-type]
    })  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    monkeypatch.setenv("WLCGCLOUD_SECRET_BROKEN", "secret")
    return {"image": endorsed["first"], "aws": moto_ec2, "one": one_endorsed}
