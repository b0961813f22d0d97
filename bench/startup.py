"""Start-up benchmark: median wall time and peak RSS of the commands people type most.

    .venv/bin/python bench/startup.py [--runs 30]

Measures `wlcgcloud --version`, `wlcgcloud --help`, completion of a subcommand
(`wlcgcloud pro<TAB>`) and of a profile name, and, when they are installed, `aws --version` and
`openstack --version` for comparison. Each run is a fresh process; peak RSS comes from wait4().
Runs in a throwaway config/state directory, so it reads none of your files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUDGET_MS = {"--version": 60, "--help": 150, "complete subcommand": 60, "complete profile": 60}
BUDGET_MB = {"--version": 25, "complete subcommand": 25, "complete profile": 25}


def measure(argv: list[str], env: dict[str, str], runs: int) -> tuple[float, float | None]:
    """Median wall time (ms) over `runs` fresh processes, and peak RSS (MB) from /usr/bin/time.

    RSS is read by GNU time around the exec'd command alone: wait4() on a child forked from this
    (larger) benchmark process would report the parent's pages too.
    """
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        code = subprocess.call(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - start) * 1000)
        if code != 0:
            raise SystemExit(f"{' '.join(argv)} failed with exit {code}")
    peak = None
    gnu_time = shutil.which("time", path="/usr/bin")
    if gnu_time:
        with tempfile.NamedTemporaryFile("r") as out:
            subprocess.call(
                [gnu_time, "-f", "%M", "-o", out.name, *argv],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            peak = int(out.read().split()[-1]) / 1024
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    exe = shutil.which("wlcgcloud", path=os.path.dirname(sys.executable)) or shutil.which("wlcgcloud")
    if not exe:
        raise SystemExit("wlcgcloud is not installed next to this interpreter; run dev/test first")
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WLCGCLOUD_", "AWS_", "OS_"))}
        env.update(
            WLCGCLOUD_CONFIG=str(Path(tmp, "config.toml")), WLCGCLOUD_STATE_DIR=tmp, AWS_EC2_METADATA_DISABLED="true"
        )
        Path(tmp, "config.toml").write_text(
            "".join(f'[profiles.site-{i:02d}]\nprovider = "ec2"\nregion = "eu-west-1"\n\n' for i in range(50))
        )
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            ("--version", [exe, "--version"], env),
            ("--help", [exe, "--help"], env),
            (
                "complete subcommand",
                [exe],
                {**env, "_WLCGCLOUD_COMPLETE": "bash", "COMP_WORDS": "wlcgcloud\npro\n", "COMP_CWORD": "1"},
            ),
            (
                "complete profile",
                [exe],
                {
                    **env,
                    "_WLCGCLOUD_COMPLETE": "bash",
                    "COMP_WORDS": "wlcgcloud\nprofile\nshow\nsite-1\n",
                    "COMP_CWORD": "3",
                },
            ),
            ("python -c pass", [sys.executable, "-c", "pass"], env),
        ]
        for tool in ("aws", "openstack"):
            path = shutil.which(tool)
            if path:
                cases.append((f"{tool} --version", [path, "--version"], env))
        print(f"{'command':<22} {'median ms':>10} {'budget':>7} {'peak MB':>8} {'budget':>7}")
        for name, argv, case_env in cases:
            runs = args.runs if not name.startswith(("aws", "openstack")) else max(5, args.runs // 5)
            ms, mb = measure(argv, case_env, runs)
            b_ms = BUDGET_MS.get(name)
            b_mb = BUDGET_MB.get(name)
            rss = f"{mb:.1f}" if mb is not None else "n/a"
            print(f"{name:<22} {ms:>10.1f} {b_ms or '':>7} {rss:>8} {b_mb or '':>7}")


if __name__ == "__main__":
    main()
