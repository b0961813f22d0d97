"""Every test runs in a throwaway world: HOME, XDG dirs, config, state and keyring in tmp_path."""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest

from wlcgcloud.__main__ import main

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
from keyring_backend import FileKeyring  # noqa: E402

CLEARED_PREFIXES = ("AWS_", "OS_", "ONE_", "WLCGCLOUD_", "BEARER_TOKEN", "X509_", "PYTHON_KEYRING")


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
    monkeypatch.setenv("WLCGCLOUD_TEST_KEYRING", str(w.keyring_file))
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
