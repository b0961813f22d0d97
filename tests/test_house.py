"""House rules of the code base that no linter here checks: files stay small enough to read."""

from __future__ import annotations

from pathlib import Path

import wlcgcloud

MAX_LINES = 600  # past this a module does two things; split it by concern (CONTRIBUTING.md, Style)


def test_no_module_of_wlcgcloud_is_longer_than_600_lines() -> None:
    package = Path(wlcgcloud.__file__).parent
    modules = sorted(package.rglob("*.py"))
    assert len(modules) > 20  # the walk found the package, not an empty directory
    long = {str(p.relative_to(package)): n for p in modules if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these by concern: {long}"


def test_a_built_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """What `pipx install .` installs: a non-editable build, which an editable test run never exercises."""
    import subprocess
    import sys
    import zipfile

    root = Path(wlcgcloud.__file__).parent.parent
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(root)], capture_output=True, text=True)  # fmt: skip
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("wlcgcloud-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    package = root / "wlcgcloud"
    wanted = {str(p.relative_to(root)) for p in package.rglob("*") if p.suffix in (".py", ".json", ".sh")}
    assert "wlcgcloud/ledger/postgresql.py" in wanted and "wlcgcloud/cli/tree.json" in wanted
    assert wanted - names == set()
