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
