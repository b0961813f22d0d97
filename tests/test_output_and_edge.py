"""The renderer, global options anywhere, streams, exit codes, and the real installed command."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from typing import Any

import pytest
import yaml

from wlcgcloud.__main__ import hoist_global_options
from wlcgcloud.output import Column, render

from conftest import Run, World

ROWS = [
    {"id": "i-1", "state": "running", "vcpus": 4, "addresses": ["10.0.0.1", "10.0.0.2"], "ok": True, "x": None},
    {"id": "i-2", "state": "pending", "vcpus": 2, "addresses": [], "ok": False, "x": {"a": 1}},
]


def rendered(fmt: str, data: object = ROWS, **kw: object) -> str:
    buf = io.StringIO()
    render(data, fmt=fmt, stream=buf, **kw)  # type: ignore[arg-type]
    return buf.getvalue()


def test_json_yaml_csv_table_carry_the_same_rows() -> None:
    import json

    assert json.loads(rendered("json")) == ROWS
    assert yaml.safe_load(rendered("yaml")) == ROWS
    rows = list(csv.DictReader(io.StringIO(rendered("csv"))))
    assert [r["id"] for r in rows] == ["i-1", "i-2"]
    assert rows[0]["addresses"] == "10.0.0.1, 10.0.0.2"
    table = rendered("table", columns=[Column("id", "ID"), Column("state", "STATE"), Column("vcpus", "VCPUS")])
    lines = table.splitlines()
    assert lines[0].split() == ["ID", "STATE", "VCPUS"]
    assert lines[1].split() == ["i-1", "running", "4"]
    assert all(line == line.rstrip() for line in lines)  # no trailing padding off a terminal
    assert "\x1b[" not in table


def _random_json(rng: Any, depth: int = 0) -> Any:
    """A value of the kinds listings hold, nested, with the strings and numbers JSON is particular about."""
    from datetime import UTC, datetime

    scalars = [None, True, False, 0, -5, 2**70, 1.5, 0.1, 1e-300, float("nan"), float("inf"), -float("inf"), "",
               'é\n"\\\x00}, {"', '},\n      {"', "\u2028", datetime(2026, 1, 1, tzinfo=UTC), (1, "a")]  # fmt: skip
    pick = rng.random()
    if depth > 3 or pick < 0.45:
        return rng.choice(scalars)
    if pick < 0.6:  # a listing: rows of plain values, with the odd one that is not a row
        rows = [{"id": rng.choice(scalars[:14]), "n": rng.choice(scalars[:14])}, {"z": 1}, {}, [1], {"a": {"b": 2}}]
        return [rng.choice(rows) for _ in range(rng.randint(0, 12))]
    if pick < 0.8:
        keys = ["a", "ü", "k k", "", '}, {"']
        return {rng.choice(keys) + str(i): _random_json(rng, depth + 1) for i in range(rng.randint(0, 4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]


@pytest.mark.parametrize("c_encoder", [True, False])
def test_json_is_written_in_pieces_with_the_same_text(c_encoder: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """`-o json` writes rows through json's C encoder in chunks; the text is exactly json.dumps(indent=2)'s."""
    import json.encoder
    import random

    from wlcgcloud.output import Streamed, to_json, write_json

    if not c_encoder:
        monkeypatch.setattr(json.encoder, "c_make_encoder", None)  # as on a Python without json's C part
    rng = random.Random(11)
    for _ in range(3000):
        value = _random_json(rng)
        buf = io.StringIO()
        write_json(value, buf)
        assert buf.getvalue() == to_json(value) + "\n"
    many = [{"instance": f"i-{n}", "hours": n / 7, "said": None} for n in range(12_001)]  # several chunks
    buf = io.StringIO()
    write_json({"rows": many, "total": {"n": 1}}, buf)
    assert buf.getvalue() == to_json({"rows": many, "total": {"n": 1}}) + "\n"
    # Rows made as they are written (usage --by instance) read the same; every other format gets a list.
    for rows in (many, [], [{"a": 1}, [2], {"b": {"c": 3}}]):
        assert rendered("json", {"rows": Streamed(iter(rows)), "n": 1}) == to_json({"rows": rows, "n": 1}) + "\n"
        assert yaml.safe_load(rendered("yaml", {"rows": Streamed(iter(rows))})) == {"rows": rows}
    assert json.loads(rendered("json", {"rows": Streamed(iter(many))}, query="rows[1].instance")) == "i-1"


def test_query_applies_to_the_json_form_in_every_format() -> None:
    assert rendered("json", query="[?state=='running'].id") == '[\n  "i-1"\n]\n'
    assert rendered("table", query="[0].vcpus") == "4\n"
    assert rendered("csv", query="[].{id: id, n: vcpus}") == "id,n\ni-1,4\ni-2,2\n"


def test_wide_rows_are_not_wrapped_off_a_terminal() -> None:
    long = "x" * 300
    out = rendered("table", data=[{"id": long, "other": "y"}])
    assert long in out


def test_hoisting_global_options() -> None:
    assert hoist_global_options(["profile", "list", "-o", "json", "--query", "[0]", "-p", "a", "-y"]) == [
        "-o",
        "json",
        "--query",
        "[0]",
        "-p",
        "a",
        "-y",
        "profile",
        "list",
    ]
    assert hoist_global_options(["profile", "show", "x", "--output=yaml", "-pa"]) == [
        "--output=yaml",
        "-pa",
        "profile",
        "show",
        "x",
    ]
    assert hoist_global_options(["launch", "--", "-o", "json"]) == ["launch", "--", "-o", "json"]


def test_global_options_after_the_command(run: Run) -> None:
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    before = run("-o", "json", "profile", "list")
    after = run("profile", "list", "-o", "json")
    assert before.code == after.code == 0
    assert before.out == after.out
    assert run("profile", "list", "--query", "[0].name", "-o", "json").out == '"a"\n'


def test_output_from_environment_and_bad_values(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    monkeypatch.setenv("WLCGCLOUD_OUTPUT", "yaml")
    assert yaml.safe_load(run("profile", "list").out)[0]["name"] == "a"
    r = run("profile", "list", "-o", "xml")
    assert r.code == 2 and "unknown output format 'xml'" in r.err
    r = run("profile", "list", "--query", "[?", "-o", "json")
    assert r.code == 2 and "invalid --query" in r.err


def test_profile_from_environment_selects_show_default(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    assert run("profile", "add", "b", "--provider", "ec2", "--region", "s").code == 0
    assert run("profile", "show", "-o", "json").json()["name"] == "a"  # type: ignore[index]
    monkeypatch.setenv("WLCGCLOUD_PROFILE", "b")
    assert run("profile", "show", "-o", "json").json()["name"] == "b"  # type: ignore[index]


def test_usage_errors_are_one_line(run: Run) -> None:
    r = run("profile", "list", "--bogus")
    assert r.code == 2
    assert r.err.strip().splitlines() == ["error: No such option: --bogus. Run 'wlcgcloud profile list --help'."]
    r = run("nosuchcommand")
    assert r.code == 2 and "No such command" in r.err


def test_internal_error_is_one_line_and_traceback_only_with_debug(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import wlcgcloud.cli

    def broken(argv: list[str]) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(wlcgcloud.cli, "run", broken)
    r = run("profile", "list")
    assert r.code == 1
    assert "internal error: RuntimeError: boom" in r.err and "Traceback" not in r.err
    r = run("profile", "list", "--debug")
    assert r.code == 1 and "Traceback" in r.err


# ----------------------------------------------------------------------------- the installed command

WLCGCLOUD = shutil.which("wlcgcloud", path=os.path.dirname(sys.executable))
SDKS = ("boto3", "botocore", "openstack", "keystoneauth1", "pyone", "libcloud")


def installed(world: World, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert WLCGCLOUD, "the console script is installed next to the interpreter"
    return subprocess.run(
        [WLCGCLOUD, *args],
        env={**world.env(), **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def test_console_script_and_module_entry_points(world: World) -> None:
    from wlcgcloud import __version__

    assert installed(world, "--version").stdout == f"wlcgcloud {__version__}\n"
    module = subprocess.run(
        [sys.executable, "-m", "wlcgcloud", "--version"], capture_output=True, text=True, env=world.env(), timeout=60
    )
    assert module.stdout == f"wlcgcloud {__version__}\n"


def test_subprocess_round_trip_uses_the_keyring_backend(world: World) -> None:
    p = subprocess.run(
        [WLCGCLOUD or "wlcgcloud", "profile", "add", "a", "--provider", "ec2", "--region", "r", "--secret-stdin"],
        input="sub-secret\n",
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert world.secrets() == {"wlcgcloud/a": "sub-secret"}
    out = installed(world, "profile", "list", "-o", "json")
    assert out.returncode == 0 and '"name": "a"' in out.stdout
    assert "sub-secret" not in world.config.read_text()


def test_subprocess_exit_codes_and_streams(world: World) -> None:
    r = installed(world, "profile", "show", "nope")
    assert r.returncode == 3 and r.stdout == "" and r.stderr.startswith("error: ")
    r = installed(world, "profile", "list", "--nope")
    assert r.returncode == 2 and r.stdout == ""


@pytest.mark.parametrize(
    ("args", "extra_env"),
    [
        (("--version",), {}),
        (("--help",), {}),
        (("profile", "--help"), {}),
        (("profile", "list", "-o", "json"), {}),
        ((), {"_WLCGCLOUD_COMPLETE": "bash", "COMP_WORDS": "wlcgcloud\npro\n", "COMP_CWORD": "1"}),
    ],
)
def test_start_up_imports_no_cloud_sdk(world: World, args: tuple[str, ...], extra_env: dict[str, str]) -> None:
    """Cloud SDKs are shadowed by packages that fail on import, so importing one fails the command."""
    trap = world.root / "sdk-trap"
    for sdk in SDKS:
        (trap / sdk).mkdir(parents=True)
        (trap / sdk / "__init__.py").write_text(f"raise ImportError('{sdk} imported at start-up')\n")
    env = {**world.env(), **extra_env}
    env["PYTHONPATH"] = f"{trap}{os.pathsep}{env['PYTHONPATH']}"
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wlcgcloud", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr[-500:]
    assert "imported at start-up" not in r.stderr
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "wlcgcloud" in imported
    assert not imported & set(SDKS), imported & set(SDKS)


def test_the_sdk_trap_works(world: World) -> None:
    """The trap above must catch an import: prove it with one."""
    trap = world.root / "sdk-trap"
    (trap / "boto3").mkdir(parents=True)
    (trap / "boto3" / "__init__.py").write_text("raise ImportError('boto3 imported at start-up')\n")
    r = subprocess.run([sys.executable, "-c", "import boto3"], env={**world.env(), "PYTHONPATH": str(trap)},
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and "imported at start-up" in r.stderr


def test_doctor_is_the_profile_check(run: Run, world: Any, moto_own: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import ec2_profile, write_profiles

    assert run("doctor").code == 3  # no profiles: a configuration error, with the next step
    write_profiles(world, {"aws": ec2_profile(moto_own), "nowhere": {"provider": "ec2", "region": "eu-west-1",
                                                                     "endpoint_url": "http://127.0.0.1:9",
                                                                     "access_key_id": "A", "timeout": 3}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_own.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_NOWHERE", "x")
    both = run("doctor", "-o", "json")

    def untimed(result: Any) -> Any:
        return [{**r, "checks": [{**c, "seconds": None} for c in r["checks"]]} for r in result.json()]

    assert both.code == 6 and untimed(both) == untimed(run("profile", "test", "-o", "json"))
    assert run("doctor", "aws").code == 0


def test_values_that_look_like_options_stay_with_their_option(run: Run) -> None:
    argv = ["profile", "add", "x", "--provider", "openstack", "--auth-url", "https://k/v3"]
    argv += ["--username", "-p", "--project", "a"]
    assert hoist_global_options(argv) == argv
    r = run(*argv)
    assert r.code == 0, r.err
    shown = run("profile", "show", "x", "-o", "json").json()
    assert isinstance(shown, dict)
    assert (shown["username"], shown["project"]) == ("-p", "a")


def test_clustered_global_flags_after_the_command(run: Run) -> None:
    assert hoist_global_options(["profile", "list", "-vv"]) == ["-v", "-v", "profile", "list"]
    assert run("profile", "list", "-yv").code == 0


def test_table_cells_are_not_rich_markup() -> None:
    buf = io.StringIO()
    render([{"url": "https://[fe80::1]:5000/v3", "e": "atlas[x]"}], fmt="table", stream=buf)
    assert "https://[fe80::1]:5000/v3" in buf.getvalue() and "atlas[x]" in buf.getvalue()


def test_a_misspelt_wlcgcloud_variable_is_warned_about_not_silently_ignored(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_LEDGR", "postgresql://ops@db/wlcg")
    monkeypatch.setenv("WLCGCLOUD_SECRET_ANY_PROFILE", "x")  # a profile's secret: never warned about
    result = run("ledger", "status", "-o", "json")
    assert result.code == 0
    assert result.err.splitlines() == [
        "warning: WLCGCLOUD_LEDGR is not a variable wlcgcloud reads; did you mean WLCGCLOUD_LEDGER?"
    ]
