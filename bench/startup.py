"""Start-up benchmark: median wall time and peak RSS of the commands people type most.

    .venv/bin/python bench/startup.py [--runs 30]

Measures `wlcgcloud --version`, `wlcgcloud --help`, `fleet drain --help`, `wlcgcloud` alone, completion of a subcommand
(`wlcgcloud pro<TAB>`), of a profile name and of fleet names and instance ids from the
completion cache, with 50 profiles and 1,000 cached fleets (20 per profile, 10,000 instance ids):
the program alone, and the whole TAB through bash and the committed completions/wlcgcloud.bash.
When installed, `aws --version` and `openstack --version` for comparison. Each run is a fresh
process; peak RSS comes from GNU time. Runs in a throwaway config/state directory, so it reads
none of your files.
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

COMPLETING = ("complete subcommand", "complete profile", "complete fleet", "complete fleet -p", "complete instance id")
HELPING = ("--help", "fleet drain --help", "wlcgcloud alone")
# Budgets as ratios to `python -c pass` measured in the same run (absolute times vary from run to run).
BUDGET_RATIO = {"--version": 2.0, **{c: 2.0 for c in COMPLETING}, **{h: 2.5 for h in HELPING}}
BUDGET_MB = {"--version": 25, **{c: 25 for c in COMPLETING}, **{h: 20 for h in HELPING}}


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
        # A throwaway HOME with the default (XDG) places, so the paths are found as a user's are.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WLCGCLOUD_", "AWS_", "OS_", "XDG_"))}
        env.update(HOME=tmp, AWS_EC2_METADATA_DISABLED="true")
        config, state = Path(tmp, ".config/wlcgcloud"), Path(tmp, ".local/state/wlcgcloud")
        config.mkdir(parents=True)
        state.mkdir(parents=True)
        Path(config, "config.toml").write_text(
            "".join(f'[profiles.site-{i:02d}]\nprovider = "ec2"\nregion = "eu-west-1"\n\n' for i in range(50))
        )
        import json

        profiles = {
            f"site-{i:02d}": {
                "fleet": [f"atlas-202611{d:02d}-{i:02d}{d:02d}" for d in range(1, 21)],
                "instance": [f"i-{i:02d}{n:015x}" for n in range(200)],
            }
            for i in range(50)
        }
        Path(state, "completion.json").write_text(json.dumps({"version": 1, "profiles": profiles}))
        lines = {
            "complete subcommand": "wlcgcloud\npro",
            "complete profile": "wlcgcloud\nprofile\nshow\nsite-1",
            "complete fleet": "wlcgcloud\nfleet\nshow\natlas-2026111",
            "complete fleet -p": "wlcgcloud\n-p\nsite-07\nfleet\nterminate\n",
            "complete instance id": "wlcgcloud\ninstance\nshow\ni-4",
        }
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            ("--version", [exe, "--version"], env),
            ("--help", [exe, "--help"], env),
            ("fleet drain --help", [exe, "fleet", "drain", "--help"], env),
            ("wlcgcloud alone", [exe], env),
        ]
        bash = shutil.which("bash")
        script = Path(__file__).resolve().parent.parent / "completions" / "wlcgcloud.bash"
        for name, line in lines.items():
            words = line.split("\n")
            cword = str(len(words) - 1)
            cases.append((name, [exe], {**env, "_WLCGCLOUD_COMPLETE": "bash", "COMP_WORDS": line + "\n",
                                        "COMP_CWORD": cword}))  # fmt: skip
            if bash:
                quoted = " ".join(f"'{w}'" for w in words)
                program = (f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={cword}; "
                           f"_wlcgcloud_complete; (( ${{#COMPREPLY[@]}} ))")  # fmt: skip
                path = f"{os.path.dirname(exe)}:{env['PATH']}"
                cases.append((f"TAB in bash: {name[9:]}", [bash, "--norc", "-c", program], {**env, "PATH": path}))
        cases.insert(0, ("python -c pass", [sys.executable, "-c", "pass"], env))
        for tool in ("aws", "openstack"):
            path = shutil.which(tool)
            if path:
                cases.append((f"{tool} --version", [path, "--version"], env))
        print(f"{'command':<30} {'median ms':>10} {'x python':>9} {'budget':>7} {'peak MB':>8} {'budget':>7}")
        reference = None
        for name, argv, case_env in cases:
            runs = args.runs if not name.startswith(("aws", "openstack")) else max(5, args.runs // 5)
            ms, mb = measure(argv, case_env, runs)
            reference = reference or ms  # the first case is the bare interpreter
            b_ratio = BUDGET_RATIO.get(name)
            b_mb = BUDGET_MB.get(name)
            rss = f"{mb:.1f}" if mb is not None else "n/a"
            budget = f"{b_ratio:.1f}" if b_ratio else ""
            print(f"{name:<30} {ms:>10.1f} {ms / reference:>9.2f} {budget:>7} {rss:>8} {b_mb or '':>7}")


if __name__ == "__main__":
    main()
