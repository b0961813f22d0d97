"""The cloud-init user-data every VM of a launch boots with: credential, the user's parts, a bootstrap.

One MIME multipart document (formats.md §4), in this order:
1. the user's own cloud-config parts (`--user-data`), as they are;
2. ours, a `text/cloud-config` that writes the credential to /run/wlcgcloud/ (mode 0600), points
   X509_USER_PROXY or BEARER_TOKEN_FILE at it in /etc/profile.d and /etc/environment, and writes
   the bootstrap's settings and, with a bootstrap, the in-VM agent (vmagent.py). Its `Merge-Type`
   appends our `write_files` to the user's instead of replacing them (cloud-init's default merge
   replaces lists);
3. the bootstrap script (`--bootstrap`), a file shipped in wlcgcloud/context/bootstraps/;
4. the user's other parts (scripts, boothooks, includes), as they are.

The document is rendered deterministically (a boundary derived from its content, gzip without a
time stamp), so the same launch gives the same bytes and the same idempotency key.
"""

from __future__ import annotations

import email
import email.policy
import gzip
import hashlib
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from importlib import resources
from pathlib import Path
from typing import Any

from wlcgcloud import bounded
from wlcgcloud.context import vmagent
from wlcgcloud.context.credentials import Credential
from wlcgcloud.errors import PolicyError, UsageError

RUN_DIR = "/run/wlcgcloud"
ENV_NAMES = {"x509": "X509_USER_PROXY", "token": "BEARER_TOKEN_FILE"}
# How our cloud-config joins the user's: lists appended, dicts merged, strings replaced.
MERGE_TYPE = "list(append)+dict(recurse_array)+str()"
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY")

# What cloud-init recognises by a part's first line, and the MIME type it gives it.
STARTS = (
    ("#cloud-config-archive", "text/cloud-config-archive"),
    ("#cloud-config", "text/cloud-config"),
    ("#cloud-boothook", "text/cloud-boothook"),
    ("#include-once", "text/x-include-once-url"),
    ("#include", "text/x-include-url"),
    ("#part-handler", "text/part-handler"),
    ("## template: jinja", "text/jinja2"),
    ("#!", "text/x-shellscript"),
)


@dataclass(frozen=True)
class Bootstrap:
    """A bootstrap script shipped with wlcgcloud, and the settings it takes (`--set KEY=VALUE`)."""

    name: str
    summary: str
    script: str
    settings: tuple[Setting, ...]

    def resolve(self, given: Mapping[str, str]) -> dict[str, str]:
        """The settings the script gets: `given` over the defaults; UsageError for unknown or missing ones."""
        known = {s.key: s for s in self.settings}
        unknown = sorted(set(given) - set(known))
        if unknown:
            raise UsageError(
                f"--set {unknown[0]}: bootstrap '{self.name}' has no setting '{unknown[0]}'.",
                f"It takes {', '.join(known)}; see 'wlcgcloud launch --bootstrap list'.",
            )
        missing = [s.key for s in self.settings if s.required and not given.get(s.key)]
        if missing:
            raise UsageError(
                f"bootstrap '{self.name}' needs --set {missing[0]}=...: {known[missing[0]].help}.",
            )
        return {s.key: given.get(s.key, s.default) for s in self.settings if s.key in given or s.default}


@dataclass(frozen=True)
class Setting:
    key: str
    help: str
    default: str = ""
    required: bool = False


SETTING_LINE = re.compile(r"^# set ([A-Z][A-Z0-9_]*)(?:=(\S*))?( \(required\))?: (.+)$")


def bootstraps() -> dict[str, Bootstrap]:
    """The bootstraps shipped in the package, by name; each file's header declares its settings."""
    out = {}
    for entry in sorted(resources.files("wlcgcloud.context").joinpath("bootstraps").iterdir(), key=str):
        if not entry.name.endswith(".sh"):
            continue
        script = entry.read_text(encoding="utf-8")
        summary = next((line.split(":", 1)[1].strip() for line in script.splitlines()
                        if line.startswith("# wlcgcloud-bootstrap:")), "")  # fmt: skip
        settings = tuple(
            Setting(m[1], m[4], m[2] or "", bool(m[3]))
            for line in script.splitlines()
            if (m := SETTING_LINE.match(line))
        )
        name = entry.name.removesuffix(".sh")
        out[name] = Bootstrap(name, summary, script, settings)
    return out


def bootstrap(name: str) -> Bootstrap:
    """One shipped bootstrap, or a UsageError naming the ones there are."""
    known = bootstraps()
    if name not in known:
        raise UsageError(f"--bootstrap: no bootstrap '{name}'.", f"Shipped: {', '.join(known)}.")
    return known[name]


def parse_settings(pairs: Sequence[str]) -> dict[str, str]:
    """`--set KEY=VALUE` options as a mapping."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--set '{shown_setting(pair)}': expected KEY=VALUE.")
        out[key.strip().upper()] = value
    return out


def is_secret(key: str) -> bool:
    return any(word in key.upper() for word in SECRET_WORDS)


def shown_setting(pair: str) -> str:
    key, sep, _ = pair.partition("=")
    return f"{key}=(redacted)" if sep and is_secret(key) else (key if sep else "(not KEY=VALUE)")


@dataclass(frozen=True)
class Part:
    """One MIME part of the document, where it came from, and what a person may see of it."""

    message: Message = field(repr=False)
    origin: str
    described: Mapping[str, Any] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return self.message.get_content_type()

    @property
    def size(self) -> int:
        payload = self.message.get_payload(decode=True)
        return len(payload) if isinstance(payload, bytes) else 0


@dataclass(frozen=True)
class Document:
    """The whole user-data of one launch."""

    parts: tuple[Part, ...]

    def render(self) -> bytes:
        """The MIME multipart bytes, the same every time for the same parts."""
        digest = hashlib.sha256()
        for part in self.parts:
            digest.update(part.message.as_bytes(policy=email.policy.compat32))
        outer = MIMEMultipart(boundary=f"==wlcgcloud-{digest.hexdigest()[:24]}==")
        for part in self.parts:
            outer.attach(part.message)
        return outer.as_bytes(policy=email.policy.compat32.clone(linesep="\n"))

    def structure(self) -> list[dict[str, Any]]:
        """Each part's type, origin, size and a description that never holds a secret."""
        return [{"type": p.content_type, "from": p.origin, "bytes": p.size, **p.described} for p in self.parts]


@dataclass(frozen=True)
class Payload:
    """The bytes that go to one cloud: the document, gzipped when that is what makes it fit."""

    data: bytes = field(repr=False)
    rendered: int  # size of the document before compression
    gzipped: bool
    limit: int

    def summary(self) -> dict[str, Any]:
        return {"bytes": self.rendered, "sent_bytes": len(self.data), "gzipped": self.gzipped, "limit": self.limit}


def compose(
    credential: Credential | None,
    *,
    owner: str = "root",
    user_data: Path | None = None,
    bootstrap: Bootstrap | None = None,
    settings: Mapping[str, str] | None = None,
    lease: timedelta | None = None,
    now: datetime | None = None,
) -> Document:
    """The user-data document of a launch. `now` only dates the credential's description."""
    user_parts = read_user_data(user_data) if user_data else []
    configs = [p for p in user_parts if p.content_type == "text/cloud-config"]
    others = [p for p in user_parts if p.content_type != "text/cloud-config"]
    parts = [*configs]
    ours = _our_config(credential, owner, bootstrap, bootstrap.resolve(settings or {}) if bootstrap else {},
                       lease, now)  # fmt: skip
    if ours:
        parts.append(ours)
    if bootstrap:
        message = _text_part(bootstrap.script.encode(), "x-shellscript", f"wlcgcloud-bootstrap-{bootstrap.name}.sh")
        parts.append(Part(message, f"bootstrap {bootstrap.name}", {"summary": bootstrap.summary}))
    parts.extend(others)
    if not parts:
        # Nothing to send: no credential, no user-data, no bootstrap.
        return Document(())
    return Document(tuple(parts))


def fit(document: Document, limit: int, where: str) -> Payload | None:
    """The document as it goes to a cloud that accepts `limit` bytes; PolicyError when it cannot fit."""
    if not document.parts:
        return None
    raw = document.render()
    if len(raw) <= limit:
        return Payload(raw, len(raw), False, limit)
    packed = gzip.compress(raw, compresslevel=9, mtime=0)
    if len(packed) <= limit:
        return Payload(packed, len(raw), True, limit)
    raise PolicyError(
        f"{where}: user-data is {len(raw)} bytes ({len(packed)} gzipped); it accepts at most {limit}.",
        "Ship less in --user-data, or fetch large files from the VM with #include or a script.",
    )


MULTIPART = re.compile(rb"^content-type:\s*multipart/", re.IGNORECASE | re.MULTILINE)


def read_user_data(path: Path) -> list[Part]:
    """The parts of a `--user-data` file: a MIME multipart's own parts, or one part typed by its first line.

    A file (or its gzip content) larger than any cloud accepts is refused by policy, as too-large
    user-data is (exit 5); a file that cannot be read or is not user-data is a bad argument (exit 2).
    """
    try:
        data = bounded.read_bytes(path, bounded.USER_DATA_SIZE)
    except bounded.TooLarge:
        raise _too_large(path) from None
    except OSError as exc:
        raise UsageError(f"--user-data {path}: {exc.strerror or exc}.") from None
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, path)
    origin = f"--user-data {path.name}"
    head = data.lstrip()[:200].lower()
    if head.startswith((b"content-type:", b"mime-version:")):
        # The email parser recurses once per multipart inside a multipart: bound how many there are.
        if len(MULTIPART.findall(data)) > bounded.MAX_DEPTH:
            raise UsageError(f"--user-data {path}: more than {bounded.MAX_DEPTH} multiparts; user-data has one or two.")
        message = email.message_from_bytes(data, policy=email.policy.compat32)
        inner = message.get_payload() if message.is_multipart() else [message]
        return [Part(m, origin) for m in inner if isinstance(m, Message)]
    text = data.decode("utf-8", errors="strict") if _is_utf8(data) else None
    if text is None:
        raise UsageError(f"--user-data {path}: not text; cloud-init reads text parts (or gzip of them).")
    first = text.lstrip().split("\n", 1)[0]
    subtype = next((t for start, t in STARTS if first.startswith(start)), None)
    if subtype is None:
        raise UsageError(
            f"--user-data {path}: cloud-init would not know what it is.",
            "Start it with '#cloud-config', '#!' (a script), '#cloud-boothook' or '#include', "
            "or give a MIME multipart.",
        )
    return [Part(_text_part(data, subtype.split("/", 1)[1], path.name), origin)]


def _too_large(path: Path) -> PolicyError:
    return PolicyError(
        f"--user-data {path}: user-data too large: more than {bounded.size_text(bounded.USER_DATA_SIZE)}, "
        "more than any cloud accepts.",
        "Ship less, or fetch large files from the VM with #include or a script.",
    )


def _gunzip(data: bytes, path: Path) -> bytes:
    """A gzipped --user-data file's content, inflated no further than the bound (a gzip bomb stops there)."""
    import zlib

    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        content = inflater.decompress(data, bounded.USER_DATA_SIZE + 1)
    except zlib.error as exc:
        raise UsageError(f"--user-data {path}: a broken gzip file ({exc}).") from None
    if len(content) > bounded.USER_DATA_SIZE:
        raise _too_large(path)
    if not inflater.eof:
        raise UsageError(f"--user-data {path}: a broken gzip file (truncated).")
    return content


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _text_part(body: bytes, subtype: str, filename: str, merge: bool = False) -> Message:
    """A text part that keeps its bytes: 7bit when they are ASCII, else base64 of the UTF-8."""
    text = body.decode("utf-8")
    message = MIMEText(text, subtype, "us-ascii" if text.isascii() else "utf-8")
    message.add_header("Content-Disposition", "attachment", filename=filename)
    if merge:
        message["Merge-Type"] = MERGE_TYPE
    return message


def _our_config(
    credential: Credential | None,
    owner: str,
    bootstrap: Bootstrap | None,
    settings: Mapping[str, str],
    lease: timedelta | None,
    now: datetime | None,
) -> Part | None:
    """Our cloud-config part: the credential file, its environment, the bootstrap's settings, the lease."""
    files: list[dict[str, Any]] = []
    described: list[dict[str, Any]] = []
    if credential is not None:
        path = f"{RUN_DIR}/{credential.file_name}"
        env_name = ENV_NAMES[credential.kind]
        entry: dict[str, Any] = {
            "path": path,
            # Gzipped first: a PEM is base64 already, and base64 of base64 is what the document's own gzip
            # cannot undo (1.4 KB of a VOMS proxy; with the bootstrap's agent, EC2's 16 KB was at the edge).
            "encoding": "gz+b64",
            "content": vmagent.packed(credential.data),
            "owner": owner if ":" in owner else f"{owner}:{owner}" if owner != "root" else "root:root",
            "permissions": "0600",
        }
        if owner != "root":
            # The account may come from this very cloud-config (users:); write after it exists.
            entry["defer"] = True
        files.append(entry)
        summary = credential.summary(now) if now else {"fingerprint": credential.fingerprint}
        described.append({"path": path, "owner": entry["owner"], "permissions": "0600",
                          "content": f"{credential.kind} credential {summary.get('fingerprint')}"
                                     + (f", {summary['lifetime']} left" if "lifetime" in summary else "")
                                     + f", {credential.subject}"})  # fmt: skip
        files.append({"path": "/etc/profile.d/wlcgcloud.sh", "content": f"export {env_name}={path}\n",
                      "permissions": "0644"})  # fmt: skip
        files.append({"path": "/etc/environment", "content": f"{env_name}={path}\n", "append": True})
        described.append({"path": "/etc/profile.d/wlcgcloud.sh", "content": f"export {env_name}={path}"})
        described.append({"path": "/etc/environment", "content": f"{env_name}={path} (appended)"})
    if bootstrap is not None:
        body = "".join(f"{key}={shlex.quote(value)}\n" for key, value in settings.items())
        files.append({"path": f"{RUN_DIR}/bootstrap.env", "content": body, "permissions": "0600"})
        visible = {key: "(redacted)" if is_secret(key) else value for key, value in settings.items()}
        described.append({"path": f"{RUN_DIR}/bootstrap.env", "permissions": "0600", "settings": visible})
        # The in-VM agent: drain requests, machine features, the shutdown message (docs/vm-side.md).
        agent, shown_agent = vmagent.agent_files(bootstrap.name, lease)
        files.extend(agent)
        described.extend(shown_agent)
    config: dict[str, Any] = {}
    if files:
        config["write_files"] = files
    if lease is not None:
        minutes = max(1, int(lease.total_seconds() // 60))
        # cloud-init schedules `shutdown -P +minutes` once boot is done: the VM ends its own lease.
        config["power_state"] = {"mode": "poweroff", "delay": minutes,
                                  "message": "wlcgcloud: the fleet's lease has ended"}  # fmt: skip
    if not config:
        return None
    import yaml  # only with something to write: ~15 ms

    body = "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1 << 20)
    message = _text_part(body.encode(), "cloud-config", "wlcgcloud.cfg", merge=True)
    shown: dict[str, Any] = {"write_files": described} if described else {}
    if lease is not None:
        shown["power_state"] = f"poweroff {config['power_state']['delay']} min after boot (the lease)"
    return Part(message, "wlcgcloud", shown)
