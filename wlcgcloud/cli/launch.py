"""`wlcgcloud launch`: start a fleet of an endorsed image with a forwarded credential.

Thin: parse the options, let `wlcgcloud.fleet` plan (every policy check) and launch, render.
The domain layer is imported inside the command so `--help` and completion stay light.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wlcgcloud.cli.common import changing, emit, globals_of, info, warn, working
from wlcgcloud.context.credentials import KINDS
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column

if TYPE_CHECKING:
    from wlcgcloud.launch_plan import LaunchPlan

CREDENTIALS = KINDS  # --credential's choices: the kinds the credentials module knows
COLUMNS = [
    Column("id", "ID"),
    Column("name", "NAME"),
    Column("profile", "PROFILE"),
    Column("state", "STATE"),
    Column("flavor", "FLAVOR"),
    Column("image", "IMAGE"),
]
BOOTSTRAP_COLUMNS = [Column("name", "NAME"), Column("summary", "WHAT IT DOES"), Column("settings", "SETTINGS")]


def launch(
    ctx: typer.Context,
    image: Annotated[
        str | None,
        typer.Argument(help="Endorsed image: its identifier or title (see 'wlcgcloud image list').", metavar="IMAGE"),
    ] = None,
    flavor: Annotated[
        str | None, typer.Option("--flavor", help="Instance type / flavor / VM template; default: the profile's.")
    ] = None,
    count: Annotated[int, typer.Option("--count", "-n", help="How many instances.")] = 1,
    fleet_name: Annotated[
        str | None, typer.Option("--fleet", help="Fleet name; default <experiment>-<yyyymmdd>-<4 hex>.")
    ] = None,
    experiment: Annotated[str | None, typer.Option("--experiment", help="Default: the profile's.")] = None,
    credential: Annotated[
        str, typer.Option("--credential", help="auto | x509 | token | none: what to forward into the VMs.")
    ] = "auto",
    proxy: Annotated[
        Path | None,
        typer.Option("--proxy", readable=False, help="X.509 proxy file; default $X509_USER_PROXY, /tmp/x509up_u<uid>."),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", readable=False, help="Bearer token file; default: WLCG token discovery."),
    ] = None,
    min_lifetime: Annotated[
        str | None,
        typer.Option("--min-lifetime", help="Refuse a credential with less left (default 6h proxy, 15m token)."),
    ] = None,
    credential_owner: Annotated[
        str, typer.Option("--credential-owner", help="Account that owns the credential file in the VM.")
    ] = "root",
    user_data: Annotated[
        Path | None,
        typer.Option(
            "--user-data", readable=False, help="Your own cloud-init part(s): cloud-config, script, multipart."
        ),
    ] = None,
    bootstrap: Annotated[
        str | None, typer.Option("--bootstrap", help="A shipped bootstrap (htcondor, script); 'list' lists them.")
    ] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE for the bootstrap; repeatable.")
    ] = None,
    lease: Annotated[str | None, typer.Option("--lease", help="Bound the fleet's life: 12h, 3d.")] = None,
    spread: Annotated[bool, typer.Option("--spread", help="Divide --count over several -p by free quota.")] = False,
    spot: Annotated[bool, typer.Option("--spot", help="EC2 spot instances.")] = False,
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every instance runs (or failed).")] = False,
    timeout: Annotated[str | None, typer.Option("--timeout", help="How long --wait waits (default 15m).")] = None,
    rollback: Annotated[
        bool, typer.Option("--rollback-on-failure", help="Terminate what launched when not all of it could.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check everything and show the plan; start nothing.")
    ] = False,
    render_user_data: Annotated[
        Path | None,
        typer.Option("--render-user-data", help="With --dry-run: write the exact user-data to this new file (0600)."),
    ] = None,
    allow_unendorsed: Annotated[
        bool, typer.Option("--allow-unendorsed", help="Launch an image no endorsed list vouches for (tagged so).")
    ] = False,
) -> None:
    """Launch a fleet of an endorsed image, with your X.509 proxy or WLCG token forwarded into each VM.

    IMAGE is an endorsed identifier or title; a raw cloud image id is refused (exit 5) unless
    --allow-unendorsed. The credential is checked (a proxy, not readable by others, enough life
    left) and written in the VM to /run/wlcgcloud/ (mode 0600) through cloud-init, with
    X509_USER_PROXY or BEARER_TOKEN_FILE set. --dry-run runs every check of a real launch (same
    exit codes) and shows the plan with the credential as a fingerprint, never its bytes.

    Each launch is written to the local ledger before its first API call. Run the same command
    again after a crash or Ctrl-C and it resumes the fleet: what the cloud already has (found by
    the fleet's tags) is kept, only the rest is launched; after a kill it first waits (up to the
    profile's timeout) for calls the dead process had sent. Some profiles or instances failing is
    exit 7, with each failure on stderr and in the JSON's "errors".

    \b
    Examples:
      wlcgcloud launch atlas-wn-el9 -p cern-atlas --count 20 --dry-run
      wlcgcloud launch atlas-wn-el9 -p cern-atlas -n 20 --bootstrap htcondor --set COLLECTOR=cm.example.org
      wlcgcloud launch 7c1e... -p aws-atlas --credential token --lease 12h -o json
      wlcgcloud launch atlas-wn-el9 -p lal-one --dry-run --render-user-data /tmp/ud
      wlcgcloud launch atlas-wn-el9 -p cern-atlas -p aws-atlas --spread -n 200 --wait --timeout 20m
      wlcgcloud launch --bootstrap list
    """
    from wlcgcloud import launch_plan
    from wlcgcloud.context.userdata import parse_settings
    from wlcgcloud.ledger import open_ledger
    from wlcgcloud.times import parse_duration

    g = globals_of(ctx)
    if bootstrap == "list":
        _list_bootstraps(ctx)
        return
    if image is None:
        raise UsageError("missing IMAGE: an endorsed image's identifier or title.", "See 'wlcgcloud image list'.")
    if credential not in CREDENTIALS:
        raise UsageError(f"--credential '{credential}': use one of {', '.join(CREDENTIALS)}.")
    if render_user_data is not None and not dry_run:
        raise UsageError("--render-user-data goes with --dry-run: it shows what a launch would send.")
    if timeout is not None and not wait:
        raise UsageError("--timeout is how long --wait waits: give --wait too.")
    options = launch_plan.LaunchOptions(
        image=image,
        count=count,
        flavor=flavor,
        fleet=fleet_name,
        experiment=experiment,
        credential=credential,
        proxy=proxy.expanduser() if proxy else None,
        token_file=token_file.expanduser() if token_file else None,
        min_lifetime=None if min_lifetime is None else parse_duration(min_lifetime, "--min-lifetime"),
        credential_owner=credential_owner,
        user_data=user_data.expanduser() if user_data else None,
        bootstrap=bootstrap,
        settings=parse_settings(settings or []),
        lease=None if lease is None else parse_duration(lease, "--lease"),
        allow_unendorsed=allow_unendorsed,
        spread=spread,
        spot=spot,
    )
    waiting = timedelta(minutes=DEFAULT_WAIT_MINUTES) if timeout is None else parse_duration(timeout, "--timeout")
    profiles = g.config().select(g.profiles, all_when_empty=False)
    with contextlib.ExitStack() as ledger_open:
        if not dry_run:  # a ledger that cannot be used stops the launch before any cloud is asked
            ledger_open.enter_context(open_ledger(g.config()))
        _plan_and_run(ctx, g, profiles, options, dry_run, render_user_data, waiting if wait else None, rollback)


def _plan_and_run(
    ctx: typer.Context, g: Any, profiles: Any, options: Any, dry_run: bool, render_user_data: Path | None,
    waiting: timedelta | None, rollback: bool,
) -> None:  # fmt: skip
    from wlcgcloud import launch_plan
    from wlcgcloud.launch import run_plan

    with working(g, f"Checking the launch on {len(profiles)} profile(s) ..."):
        plan = launch_plan.plan_launch(profiles, options, quotas=dry_run)
    for line in plan.warnings:
        warn(line, g)
    if options.allow_unendorsed and any(p.decision.endorsed is None for p in plan.profiles):
        warn(f"launching '{options.image}', which no endorsed image list vouches for (--allow-unendorsed); "
             "the fleet is tagged wlcg:endorsement=none.", g)  # fmt: skip
    if options.spread:
        info("--spread: " + ", ".join(f"{p.name} {p.request.count}" for p in plan.profiles)
             + " (by free quota).")  # fmt: skip
    if dry_run:
        if render_user_data is not None:
            _render(plan, render_user_data)
        _show_plan(ctx, plan)
        return
    with changing(ctx, [plan.fleet]) as ledger, _progress(g, plan) as tell:
        result = run_plan(plan, ledger, progress=tell, wait=waiting, rollback=rollback)
    _warn_outcome(g, result)
    data = result.to_dict()
    if g.output == "table":
        info(_summary(data))
        emit(ctx, data["instances"], COLUMNS)
    else:
        emit(ctx, data)
    raise typer.Exit(result.exit_code())


def _warn_outcome(g: Any, result: Any) -> None:
    """One warning per failed profile, and for an interruption, a rollback, a --wait that saw not all running."""
    for r in result.results:
        if r.error:
            warn(str(r.error), g)
    if result.interrupted:
        warn("interrupted: this is what had been launched; the ledger has it. Run the same command to go on.", g)
    if result.rolled_back:
        warn(f"--rollback-on-failure: terminated the {result.rolled_back} instance(s) this launch had.", g)
    if result.waited and result.waited != "running":
        warn(f"--wait: {result.waited}.", g)


DEFAULT_WAIT_MINUTES = 15


def _summary(data: dict[str, Any]) -> str:
    """`fleet f: 20 requested; found 20 of an earlier run, started 0.`: what was found apart from what was started."""
    parts = [f"found {data['resumed']} of an earlier run"] if data["resumed"] else []
    parts.append(f"started {data['launched']}")
    if data["failed"]:
        parts.append(f"{data['failed']} failed")
    if data["uncertain"]:
        parts.append(f"up to {data['uncertain']} may exist unseen (run the same launch again to adopt them)")
    return f"fleet {data['fleet']}: {data['requested']} requested; {', '.join(parts)}."


@contextlib.contextmanager
def _progress(g: Any, plan: LaunchPlan) -> Iterator[Callable[[str, str, int, int], None]]:
    """Per-profile progress: Rich bars on a terminal, plain lines on stderr otherwise."""
    if not sys.stderr.isatty() or g.debug:

        def line(profile: str, what: str, done: int, total: int) -> None:
            info(f"profile {profile}: {what} {done}/{total}")

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bars:  # fmt: skip
        tasks = {p.name: bars.add_task(f"{p.name}: launching", total=p.request.count) for p in plan.profiles}

        def bar(profile: str, what: str, done: int, total: int) -> None:
            bars.update(tasks[profile], completed=done, total=total, description=f"{profile}: {what}")

        yield bar


def _list_bootstraps(ctx: typer.Context) -> None:
    from wlcgcloud.context.userdata import bootstraps

    shipped = bootstraps().values()
    if globals_of(ctx).output == "table":
        table = [{"name": b.name, "summary": b.summary,
                  "settings": ", ".join(s.key + ("*" if s.required else "") for s in b.settings)}
                 for b in shipped]  # fmt: skip
        emit(ctx, table, BOOTSTRAP_COLUMNS)
        info("* required. Give settings with --set KEY=VALUE.")
    else:
        emit(ctx, [
            {"name": b.name, "summary": b.summary,
             "settings": [{"key": s.key, "required": s.required, "default": s.default or None, "help": s.help}
                          for s in b.settings]}
            for b in shipped
        ])  # fmt: skip


def _render(plan: LaunchPlan, target: Path) -> None:
    """Write the exact user-data per profile to new files only the user can read."""
    several = len(plan.profiles) > 1
    for p in plan.profiles:
        path = Path(f"{target}.{p.name}") if several else target
        data = p.payload.data if p.payload else b""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise UsageError(f"--render-user-data: {path} exists; it writes only new files.") from None
        except OSError as exc:
            raise UsageError(f"--render-user-data: cannot create {path}: {exc.strerror}.") from None
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        gz = " (gzipped, as it would be sent)" if p.payload and p.payload.gzipped else ""
        info(f"wrote the user-data for profile '{p.name}' to {path}: {len(data)} bytes{gz}, mode 0600.")


def _show_plan(ctx: typer.Context, plan: LaunchPlan) -> None:
    data = {"dry_run": True, **plan.to_dict()}
    if globals_of(ctx).output != "table":
        emit(ctx, data)
        return
    lines = [f"Dry run: fleet {data['fleet']}, {data['requested']} instance(s). Nothing is started."]
    cred = data["credential"]
    if cred:
        lines.append(
            f"Credential: {cred['kind']} from {cred['source']}, {cred['fingerprint']}, {cred['lifetime']} left "
            f"(until {cred['expires']})"
        )
        lines.append(
            f"  subject {cred['subject']}, issuer {cred['issuer']}" + (f", VO {cred['vo']}" if "vo" in cred else "")
        )
    else:
        lines.append("Credential: none forwarded.")
    lines.append("User-data:" if data["user_data"] else "User-data: none.")
    for part in data["user_data"]:
        lines.append(f"  {part['type']} from {part['from']} ({part['bytes']} bytes)")
        for f in part.get("write_files", []):
            what = f.get("content") or ", ".join(f"{k}={v}" for k, v in f.get("settings", {}).items())
            mode = f" {f['permissions']}" if "permissions" in f else ""
            owner = f" {f['owner']}" if "owner" in f else ""
            lines.append(f"    writes {f['path']}{owner}{mode}: {what}")
        if "power_state" in part:
            lines.append(f"    {part['power_state']}")
        if "summary" in part:
            lines.append(f"    {part['summary']}")
    for p in data["profiles"]:
        lines.append(f"Profile {p['profile']} ({p['provider']}): {p['requested']} x {p['flavor']}")
        img = p["image"]
        lines.append(f"  image: {img['title'] or img['cloud_image']} -> {img['cloud_image']} ({img['how']})")
        ud = p["user_data"]
        if ud:
            gz = f", gzipped to {ud['sent_bytes']}" if ud["gzipped"] else ""
            lines.append(f"  user-data: {ud['bytes']} bytes{gz} (limit {ud['limit']})")
        lines.append("  tags: " + ", ".join(f"{k}={v}" for k, v in p["tags"].items()))
        if p.get("quota"):
            q = p["quota"]
            room = "no limit" if q["free_instances"] is None else f"room for {q['free_instances']} more"
            used = ", ".join(
                f"{label} {q[key + '_used']}/{q[key] if q[key] is not None else '-'}"
                for key, label in (("instances", "instances"), ("cores", "cores"), ("memory_mb", "memory MB"))
            )
            lines.append(f"  quota: {room} of this flavor ({used})")
        lines.extend(f"  would call: {call}" for call in p["api_calls"])
    print("\n".join(lines))
