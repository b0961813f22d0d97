"""`wlcgcloud ledger ...`: where the ledger is and what it holds, who holds fleet locks, and moving it.

The ledger is SQLite in the state directory unless config.toml's `ledger` (or WLCGCLOUD_LEDGER)
names a PostgreSQL database that a team and its CI share.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import typer

from wlcgcloud.cli.common import emit, globals_of, info, new_app, warn, working
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column

app = new_app("The ledger: launches and instance lifetimes, on this machine (SQLite) or shared (PostgreSQL).")

LOCK_COLUMNS = [
    Column("fleet", "FLEET"),
    Column("user", "USER"),
    Column("host", "HOST"),
    Column("pid", "PID"),
    Column("command", "COMMAND"),
    Column("since", "SINCE"),
    Column("calls_on_the_wire", "CALLS"),
    Column("calls_until", "MAY LAND UNTIL"),
]
STATUS_COLUMNS = [Column("key", "KEY"), Column("value", "VALUE")]


@app.command("status")
def status(ctx: typer.Context) -> None:
    """Which ledger is in use, and what it holds.

    The backend (sqlite or postgresql), where it is, its schema version, how many launches and
    instances it remembers (and how many have not ended), its oldest record, the locks held now.

    \b
    Examples:
      wlcgcloud ledger status
      WLCGCLOUD_LEDGER=postgresql://ops@db.example.org/wlcg wlcgcloud ledger status -o json
    """
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)
    with open_ledger(g.config()) as ledger:
        data = ledger.status()
    if g.output == "table":
        emit(ctx, [{"key": k, "value": v} for k, v in data.items()], STATUS_COLUMNS)
    else:
        emit(ctx, data)


@app.command("locks")
def locks(ctx: typer.Context) -> None:
    """The fleet locks held now, and who holds them.

    For each: user, host, pid and command of the holder, since when, and the calls it may still
    have on the wire. A lock is released when its holder ends, however it ends (a killed
    process, a lost connection, a machine that vanished).

    \b
    Examples:
      wlcgcloud ledger locks
      wlcgcloud ledger locks -o json --query '[].{fleet: fleet, host: host, pid: pid}'
    """
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)
    with open_ledger(g.config()) as ledger:
        held = ledger.locks()
    if g.output == "table" and not held:
        info("No fleet is locked.")
    emit(ctx, held, LOCK_COLUMNS)


@app.command("export")
def export(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="Where to write the JSON lines; - for stdout.", show_default=False)],
) -> None:
    """Write every launch and instance as JSON lines, for backups and moving between sites.

    The file holds no secret (the ledger never does); it is written owner-only all the same.

    \b
    Examples:
      wlcgcloud ledger export ledger-$(date +%F).jsonl
      wlcgcloud ledger export - | gzip > ledger.jsonl.gz
    """
    import json

    from wlcgcloud.ledger import open_ledger
    from wlcgcloud.ledger.transfer import header

    g = globals_of(ctx)
    with open_ledger(g.config()) as ledger, _export_to(file) as out:  # streamed: a ledger can be large
        out.write((json.dumps(header(ledger.where), sort_keys=True) + "\n").encode())
        written = 0
        for record in ledger.export():
            out.write((json.dumps(record, sort_keys=True) + "\n").encode())
            written += 1
    if str(file) != "-":
        info(f"Wrote {written} record(s) to {file}.")


def _export_to(file: Path) -> Any:
    from wlcgcloud import atomic

    if str(file) == "-":
        return contextlib.nullcontext(sys.stdout.buffer)
    return atomic.writing(file.expanduser(), 0o600)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A file from 'ledger export'; - for stdin.", show_default=False)],
) -> None:
    """Merge a 'ledger export' file into this ledger.

    Safe to run twice: what is known already stays as it is. A bad line anywhere in the file
    stops the import with nothing of it merged.

    \b
    Examples:
      wlcgcloud ledger import ledger-2026-12-01.jsonl
      zcat ledger.jsonl.gz | wlcgcloud ledger import -
    """
    from wlcgcloud.ledger import open_ledger
    from wlcgcloud.ledger.transfer import read_lines

    g = globals_of(ctx)
    with open_ledger(g.config()) as ledger, _opened(file) as (stream, name):
        counts = ledger.absorb(read_lines(stream, name))
    info(f"Imported into {ledger.where}: {counts['launches_added']} launch(es) added, "
         f"{counts['launches_known']} known already; {counts['instances']} instance(s) merged.")  # fmt: skip
    emit(ctx, counts)


@contextlib.contextmanager
def _opened(file: Path) -> Iterator[tuple[IO[bytes], str]]:
    """The file to import, or stdin for -, with the name errors give it."""
    if str(file) == "-":
        yield sys.stdin.buffer, "stdin"
        return
    try:
        stream = file.expanduser().open("rb")
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}.") from None
    with stream:
        yield stream, str(file)


@app.command("move")
def move(
    ctx: typer.Context,
    to: Annotated[str, typer.Option("--to", help="The new ledger: a postgresql:// URL (or a SQLite file).")],
    source: Annotated[
        Path | None, typer.Option("--from", help="A SQLite ledger file to copy (default: the ledger in use now).")
    ] = None,
    keep_config: Annotated[
        bool, typer.Option("--keep-config", help="Copy only; leave config.toml's ledger as it is.")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be copied; change nothing.")] = False,
) -> None:
    """Copy the ledger into another (SQLite into a team's PostgreSQL), and use it.

    config.toml's `ledger` is set to the new one (unless --keep-config). Safe to run again:
    what is there already stays as it is. The old file is kept.

    The password is never part of --to: give it as WLCGCLOUD_LEDGER_PASSWORD, in
    ledger_password_file, in the keyring or in ~/.pgpass.

    \b
    Examples:
      wlcgcloud ledger move --to 'postgresql://ops@db.example.org/wlcg?sslmode=verify-full' --dry-run
      WLCGCLOUD_LEDGER_PASSWORD=... wlcgcloud ledger move --to 'postgresql://ops@db.example.org/wlcg'
    """
    from wlcgcloud.config import ledger_url_problem, update_config
    from wlcgcloud.ledger import FILE_NAME, LOCATION_VARIABLE, Ledger, location, open_ledger
    from wlcgcloud.paths import state_dir

    g = globals_of(ctx)
    config = g.config()
    problem = ledger_url_problem(to)
    if problem:
        raise UsageError(f"--to: {problem}.")
    if source is not None and not source.expanduser().is_file():
        raise UsageError(f"--from {source}: no such SQLite ledger file.")
    where, password_file = location(config)
    if source is None and Ledger.shown(where) == Ledger.shown(to):
        # `ledger` already names the new one (written by hand): what there is to move is this machine's file.
        default = state_dir() / FILE_NAME
        if not default.exists():
            info(f"The ledger in use is {Ledger.shown(to)} already, and {default} does not exist: nothing to move.")
            emit(ctx, {"from": None, "to": Ledger.shown(to), "launches_added": 0, "launches_known": 0,
                       "instances": 0, "config_updated": False})  # fmt: skip
            return
        source = default
    with open_ledger(config) if source is None else contextlib.closing(Ledger(source)) as old:
        if old.where == Ledger.shown(to):
            raise UsageError(f"--from and --to name the same ledger, {old.where}.")
        held = old.status()
        counts = {"launches": held["launches"], "instances": held["instances"]}
        if dry_run:
            info(f"dry run: would copy {counts['launches']} launch(es) and {counts['instances']} instance(s) "
                 f"from {old.where} to {Ledger.shown(to)}.")  # fmt: skip
            emit(ctx, {"dry_run": True, "from": old.where, "to": Ledger.shown(to), **counts})
            return
        with contextlib.closing(Ledger(to, password_file)) as new, working(g, f"Copying into {new.where} ..."):
            merged = new.absorb(old.export())  # streamed, all or nothing
            status = new.status()
    if not keep_config:
        update_config(config.path, lambda doc: doc.__setitem__("ledger", to))
        if os.environ.get(LOCATION_VARIABLE):
            warn(f"{LOCATION_VARIABLE} is set, and names the ledger before config.toml does; change or unset it.", g)
    info(f"Copied into {status['where']}: {merged['launches_added']} launch(es) added "
         f"({merged['launches_known']} there already), {merged['instances']} instance(s) merged. "
         f"The old ledger {old.where} is kept."
         + ("" if keep_config else f" config.toml now names the new one ({config.path})."))  # fmt: skip
    emit(ctx, {"from": old.where, "to": status["where"], **merged, "config_updated": not keep_config})


@app.command("password")
def password(
    ctx: typer.Context,
    stdin: Annotated[bool, typer.Option("--stdin", help="Read the password from the first line of stdin.")] = False,
    file: Annotated[
        Path | None,
        typer.Option("--file", help="Keep it in FILE (written 0600) and name FILE in config.toml, not the keyring."),
    ] = None,
    forget: Annotated[
        bool, typer.Option("--forget", help="Remove it from the keyring, and unset ledger_password_file.")
    ] = False,
) -> None:
    """Keep the PostgreSQL ledger's password in the keyring, or in a file only you can read.

    On a terminal it is asked for with a hidden prompt. It never goes into config.toml; with
    --file, config.toml names the file (ledger_password_file). WLCGCLOUD_LEDGER_PASSWORD and
    libpq's ~/.pgpass work too, with nothing stored by wlcgcloud.

    \b
    Examples:
      wlcgcloud ledger password                       # asks, keeps it in the keyring
      wlcgcloud ledger password --stdin --file ~/.config/wlcgcloud/ledger.password < pw   # no keyring needed
      wlcgcloud ledger password --forget
    """
    from wlcgcloud import atomic
    from wlcgcloud.cli.common import read_secret
    from wlcgcloud.config import update_config
    from wlcgcloud.ledger.postgresql import store_password

    g = globals_of(ctx)
    if forget:
        if stdin or file:
            raise UsageError("--forget goes alone.")
        forgot = store_password(None)
        named = g.config().ledger_password_file
        if named:
            update_config(g.config().path, lambda doc: doc.pop("ledger_password_file", None))
        said = "The ledger's password is no longer in the keyring." if forgot else "The keyring holds none."
        if named:
            said += f" config.toml no longer names {named} (the file itself is left as it is)."
        info(said)
        return
    value = read_secret("the ledger's password", stdin, required=True)
    if not value:
        raise UsageError("no password given; nothing was changed.")
    if file is None:
        store_password(value)
        info("The ledger's password is in the keyring (service wlcgcloud, user @ledger).")
        return
    path = file.expanduser().absolute()
    atomic.write(path, value + "\n", 0o600)
    update_config(g.config().path, lambda doc: doc.__setitem__("ledger_password_file", str(path)))
    info(f"Wrote the password to {path} (mode 0600); config.toml names it as ledger_password_file.")
