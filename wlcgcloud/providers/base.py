"""The one interface every cloud is driven through, and the small value objects it returns.

Providers return these objects and raise only `wlcgcloud.errors` exceptions; nothing from an
SDK crosses this line. Provider-specific detail goes in `extra`. This module imports no SDK.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import ssl
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from wlcgcloud.config import Profile
from wlcgcloud.errors import CloudError, PartialFailure, PolicyError, WlcgError
from wlcgcloud.providers.answers import USER_DATA_LINE, NotTheApi, causes, clean, scrub, sent, why_unreachable
from wlcgcloud.providers.waiting import call_with_timeout
from wlcgcloud.secretstore import Secret
from wlcgcloud.shutdown import CONSOLE_LINES, ShutdownMessage, from_console
from wlcgcloud.times import stamp

T = TypeVar("T")
E = TypeVar("E", bound=WlcgError)

# Normalised instance states of the contract, in lifecycle order.
STATES = ("pending", "running", "stopping", "stopped", "terminated", "error", "unknown")

# Our identity on cloud resources (contract, "Fleets"). EC2 tags and OpenStack metadata use
# these keys; OpenNebula upper-cases them with "_" (see `one_attribute`).
TAG_PREFIX = "wlcg:"
FLEET_TAG = "wlcg:fleet"
TAG_KEYS = (
    "wlcg:fleet",
    "wlcg:profile",
    "wlcg:experiment",
    "wlcg:image",
    "wlcg:endorsement",
    "wlcg:launched-by",
    "wlcg:created",
    "wlcg:flavor",  # the flavor launched, so `fleet list` on EC2 needs no DescribeInstances
    "wlcg:lease-until",
    "wlcg:credential",  # kind, fingerprint and end of life of the forwarded credential: never the credential
    "wlcg:request",
    "wlcg:drainable",  # launched with the VM agent of a shipped bootstrap: it drains on request
    "wlcg:drain-by",  # a drain was asked: the VM stops taking work and powers off by then
    "wlcg:hs06",  # the VM's HEP-SPEC06, from the profile's benchmarks: Machine Features tell its payload
    "wlcg:shutdown-code",  # OpenNebula: the HEPiX code the VM left through OneGate as it ended
    "wlcg:shutdown-message",
)
ENDORSED_ID_TAG = "wlcg:endorsed-id"


def one_attribute(tag: str) -> str:
    """`wlcg:launched-by` -> `WLCG_LAUNCHED_BY`: how OpenNebula USER_TEMPLATE spells our tags."""
    return re.sub(r"[^A-Za-z0-9]", "_", tag).upper()


def aware(moment: datetime) -> datetime:
    """A datetime with a timezone: naive ones are taken as UTC, as the contract says of every time."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# What an error text from a cloud may carry that we must never show: Nova, JSON-schema
# validators and botocore echo the offending input ("Value: <the user-data>", "value: ...",
# '"user_data": "..."'), and user-data travels base64-encoded. So the rest of a line after such
# a keyword goes, and so does any long base64 run, wherever it stands.
def contract_fields(value: Any) -> dict[str, Any]:
    """A value object as the contract's JSON: its fields in declared order, but not `extra`.

    `extra` holds what one cloud alone knows, which the contract does not promise. Datetimes
    become UTC stamps, tuples lists and mappings dicts, so the result goes to JSON as it is.
    """
    return {f.name: _plain(getattr(value, f.name)) for f in fields(value) if f.name != "extra"}


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return stamp(value)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


@dataclass(frozen=True)
class Instance:
    """One virtual machine as every cloud reports it."""

    id: str
    name: str
    profile: str
    provider: str
    state: str  # one of STATES
    provider_state: str  # the cloud's own words, e.g. "ACTIVE", "ACTIVE/BOOT_FAILURE", "running"
    flavor: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    image: str | None = None
    launched_at: datetime | None = None
    addresses: tuple[str, ...] = ()
    tags: Mapping[str, str] = field(default_factory=dict)  # our wlcg:* tags, contract spelling
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fleet(self) -> str | None:
        return self.tags.get(FLEET_TAG)

    @property
    def drain_by(self) -> datetime | None:
        """The deadline of a drain asked of it (wlcg:drain-by, as we write it and the agent reads it), None
        when none was or it is not such a time (OpenNebula's VMs may write their USER_TEMPLATE)."""
        try:
            return datetime.strptime(self.tags["wlcg:drain-by"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except (KeyError, ValueError):
            return None

    def to_dict(self) -> dict[str, Any]:
        """The `instance list -o json` shape of the contract, plus our tags."""
        # The fleet (read from the tags) goes right after the name; the fields then keep their places.
        return {"id": self.id, "name": self.name, "fleet": self.fleet, **contract_fields(self)}


@dataclass(frozen=True)
class Image:
    """A cloud image (AMI, Glance image, OpenNebula image)."""

    id: str
    name: str
    profile: str
    provider: str
    size_bytes: int | None = None
    checksum: tuple[str, str] | None = None  # (algorithm, hex value) where the cloud keeps one
    endorsed_id: str | None = None  # the wlcg:endorsed-id mark, if any
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        checksum = f"{self.checksum[0]}:{self.checksum[1]}" if self.checksum else None
        return {**contract_fields(self), "checksum": checksum}


@dataclass(frozen=True)
class Match:
    """A cloud image found to carry an endorsed image, how that was established, and whether it holds."""

    image: Image
    how: str
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {**self.image.to_dict(), "how": self.how, "ok": self.ok}


@dataclass(frozen=True)
class Flavor:
    """An instance size: EC2 instance type, Nova flavor, OpenNebula VM template."""

    name: str
    id: str
    vcpus: int | None
    memory_mb: int | None
    disk_gb: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return contract_fields(self)


@dataclass(frozen=True)
class Quota:
    """Limits and current use; None where the cloud sets no limit or cannot tell."""

    instances: int | None = None
    instances_used: int | None = None
    cores: int | None = None
    cores_used: int | None = None
    memory_mb: int | None = None
    memory_mb_used: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return contract_fields(self)


@dataclass(frozen=True)
class UsageRecord:
    """How long one instance ran inside a time window, and how big it was."""

    instance_id: str
    name: str
    profile: str
    provider: str
    started_at: datetime
    ended_at: datetime | None  # None while it runs
    flavor: str | None = None
    vcpus: int | None = None
    memory_mb: int | None = None
    image: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """The answer to "can I use this profile?": ok, and why not in the user's words."""

    ok: bool
    reason: str
    exit_code: int = 0  # the class of failure (4 auth, 6 unreachable) when not ok


@dataclass(frozen=True)
class LaunchRequest:
    """N instances from one request. `token` makes a retry find what a first attempt made."""

    name: str
    image: str
    flavor: str
    count: int = 1
    user_data: bytes | None = field(default=None, repr=False)  # may hold a credential: never in a repr
    tags: Mapping[str, str] = field(default_factory=dict)
    key_name: str | None = None
    network: str | None = None  # overrides the profile's
    first: int = 1  # number in the name of the first instance, where a cloud names them one by one
    spot: bool = False  # EC2 spot instances (other clouds refuse it at planning)
    shutdown_terminates: bool = False  # a VM that powers itself off is gone (the lease), where the cloud can
    basis: str = ""  # what the fleet held when the request was made (launch: every instance id known of it)

    @property
    def token(self) -> str:
        """A 32-hex idempotency key derived from everything that defines the request; `basis` makes the
        same request after the fleet changed a new one (else Nova's tag, EC2's ClientToken adopt the first)."""
        body = {
            "name": self.name,
            "image": self.image,
            "flavor": self.flavor,
            "count": self.count,
            "user_data": hashlib.sha256(self.user_data or b"").hexdigest(),
            # Tags that name the moment of the attempt differ between a launch and its retry.
            "tags": {k: v for k, v in sorted(self.tags.items()) if k not in ("wlcg:created", "wlcg:lease-until")},
            "key": self.key_name,
            "network": self.network,
            "first": self.first,
            "spot": self.spot,
            "shutdown_terminates": self.shutdown_terminates,
            **({"basis": self.basis} if self.basis else {}),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ImageUpload:
    """Checked bytes of an endorsed image, to become a cloud image marked wlcg:endorsed-id."""

    name: str
    path: Path  # the downloaded file; its size and sha512 were checked against the list
    disk_format: str  # hv:format in lower case: raw, qcow2, ...
    endorsed_id: str
    sha512: str
    uri: str  # where the list says it lives (OpenNebula fetches it from there itself)
    arch: str = "x86_64"


@dataclass(frozen=True)
class Outcome:
    """What happened to one instance of a batch action (terminate): error None means done."""

    id: str
    error: str | None = None
    exit_code: int = 0  # the class of the failure (4 refused, 6 cloud error) when there is one

    @classmethod
    def failed(cls, instance_id: str, error: WlcgError) -> Outcome:
        return cls(instance_id, error.message, error.exit_code)


class PartialLaunch(PartialFailure):
    """Some instances of one request were created and others were not; `instances` are the created ones."""

    def __init__(self, message: str, instances: list[Instance]) -> None:
        super().__init__(message)
        self.instances = instances


class UncertainLaunch(CloudError):
    """A create whose outcome is partly unknown: answers were lost and the look-up for what they made failed.

    `instances` are the ones known; the cloud may have made up to `unknown` more. Those carry the
    fleet's tags, so a later listing of the fleet (the same launch again, `fleet reconcile`)
    adopts them; the launch's intent stays open in the ledger until then.
    """

    def __init__(self, profile: str, requested: int, instances: list[Instance], unknown: int, why: str) -> None:
        known = f"{len(instances)} of {requested} instances made; up to {unknown} more" if instances else ""
        super().__init__(
            f"profile '{profile}': {known or f'up to {unknown}'} instance(s) may exist that no answer showed ({why}).",
            "Re-run the same launch to adopt them (or run 'wlcgcloud fleet reconcile').",
        )
        self.instances = instances
        self.unknown = unknown


Made = Callable[[list[Instance]], None]  # told of instances a create has made, as soon as their ids are known


class Provider(ABC):
    """One cloud account (a profile) behind the operations wlcgcloud needs.

    Every method honours the profile's `timeout` per API call, retries throttling within a
    bounded total time, and raises AuthError (4), CloudError (6) or PolicyError (5) naming
    the profile; nothing else escapes.
    """

    kind: str = ""
    # Largest user-data the cloud accepts, in bytes before any encoding.
    user_data_limit: int = 65536

    def __init__(self, profile: Profile, secret: Secret) -> None:
        self.profile = profile
        self.secret = secret
        self._hidden: frozenset[str] = frozenset({secret.value})  # replaced whole: threads read it while others add

    def hide(self, *values: str | None) -> None:
        """Keep these out of every error too: a session string, a token, what a user-data holds."""
        self._hidden = self._hidden | {v for v in values if v}

    def scrubbed(self, error: E) -> E:
        """`error` with every secret this provider knows taken out of its message and hint."""
        error.message = scrub(error.message, self._hidden)
        error.hint = scrub(error.hint, self._hidden) if error.hint else error.hint
        error.args = (error.message,)
        return error

    @property
    def name(self) -> str:
        return self.profile.name

    @abstractmethod
    def check(self) -> Check:
        """Authenticate and reach the API; a reason in words when that fails."""

    @abstractmethod
    def images(self) -> list[Image]:
        """Images the credentials may launch."""

    @abstractmethod
    def flavors(self) -> list[Flavor]:
        """Instance sizes with vCPUs, memory and disk."""

    def flavor(self, name: str) -> Flavor | None:
        """The flavor called (or with the id) `name`, or None; clouds with hundreds of sizes ask for that one."""
        return next((f for f in self.flavors() if name in (f.name, f.id)), None)

    @abstractmethod
    def quota(self) -> Quota:
        """Limits and current use."""

    @abstractmethod
    def api_version(self) -> tuple[str, str | None]:
        """The API version spoken, in words, and a warning when it is older than what we use."""

    def service_url(self) -> str | None:
        """The API endpoint behind the profile's URL, where there is one (OpenStack: Nova, from the catalog)."""
        return None

    @abstractmethod
    def key_pairs(self) -> list[str] | None:
        """Names of the SSH key pairs; None where the cloud has no key pairs (OpenNebula)."""

    @abstractmethod
    def networks(self) -> list[tuple[str, str]]:
        """(id, name) of what a launch attaches to: networks, EC2 subnets (name: the Name tag)."""

    @abstractmethod
    def create(self, request: LaunchRequest, made: Made | None = None) -> list[Instance]:
        """Create `request.count` instances in one request where the cloud allows it.

        `made` is told of instances as soon as their ids are known, before any later step can
        fail. Raises PartialLaunch when some were refused, UncertainLaunch when answers were lost
        and what they made could not be looked up.
        """

    @abstractmethod
    def launch_calls(self, request: LaunchRequest) -> list[str]:
        """The API calls `create(request)` makes, in words, for `launch --dry-run`; it makes none of them."""

    @abstractmethod
    def instances(self, fleet: str | None = None, everything: bool = False) -> list[Instance]:
        """Our instances (those with wlcg:fleet), one fleet's, or with `everything` all visible ones."""

    def fleet_members(self) -> list[Instance]:
        """Every fleet instance with what `fleet list` shows of it: state, flavor, tags.

        A cloud with a lighter way than a full listing overrides it (EC2); the Instances may then
        lack addresses, image, vCPUs and memory.
        """
        return self.instances()

    @abstractmethod
    def instance(self, instance_id: str) -> Instance | None:
        """One instance, or None if the cloud does not know it."""

    @abstractmethod
    def terminate(self, instance_ids: Sequence[str]) -> list[Outcome]:
        """Terminate instances; one outcome per id, in order."""

    @abstractmethod
    def console_log(self, instance_id: str, lines: int | None = None) -> str:
        """The instance's console output (the last `lines` lines if given)."""

    @abstractmethod
    def set_tags(self, instance_ids: Sequence[str], tags: Mapping[str, str]) -> list[Outcome]:
        """Add or change our keys on instances (EC2 tags, Nova server metadata, OpenNebula
        USER_TEMPLATE), where the VM itself can read them; one outcome per id, in order."""

    def shutdown_message(self, inst: Instance) -> ShutdownMessage | None:
        """The HEPiX shutdown message a VM that ended left (a line on its console), or None."""
        return from_console(self.console_log(inst.id, CONSOLE_LINES))

    @abstractmethod
    def usage(self, since: datetime, until: datetime) -> list[UsageRecord]:
        """Per-instance run time that overlaps [since, until)."""

    def find_endorsed(self, identifier: str, sha512: str) -> list[Match]:
        """Cloud images carrying the endorsed image `identifier` (whose bytes have `sha512`).

        Here: an explicit mark (`wlcg:endorsed-id`) on an image whose owner the profile trusts,
        because anyone can mark an image they own. OpenStack overrides this with Glance's hash.
        """
        return [
            Match(image, f"{ENDORSED_ID_TAG} = {identifier} on an image owned by {owner}")
            for image in self.images()
            if image.endorsed_id == identifier and (owner := self.trusted_owner(image))
        ]

    @abstractmethod
    def upload_image(self, upload: ImageUpload, advance: Callable[[int], None] | None = None) -> Image:
        """Make a cloud image of checked bytes, marked `wlcg:endorsed-id`; nothing is left on failure.

        `advance(n)` is told of bytes as they are uploaded, where the cloud lets us see that.
        """

    def trusted_owner(self, image: Image) -> str | None:
        """Who owns `image`, if its marks are to be believed; None otherwise."""
        return None

    @abstractmethod
    def translate(self, what: str, exc: Exception) -> WlcgError:
        """Turn an SDK exception raised while doing `what` into one of ours, naming the profile."""

    def answered(self, exc: Exception) -> bool:
        """Whether `exc` is the API's own answer (a refusal, an error code): then the call was not carried out."""
        return False

    def may_have_acted(self, error: WlcgError) -> bool:
        """Whether the call that failed with `error` may still have been carried out by the cloud.

        So when it was sent and no answer of the API came back: a broken connection, a timeout,
        an answer that is not the API's.
        """
        cause = error.__cause__
        return isinstance(cause, Exception) and not self.answered(cause) and sent(cause)

    # Shared helpers for the concrete providers.

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call, retries included, bounded by the profile's `timeout`; errors become ours.

        The SDKs' own timeouts bound each socket operation, but a call that keeps trickling or
        retries for long could outlive it; this deadline is what makes `timeout` hold for every
        cloud alike. Every error leaves scrubbed (`scrubbed`): whatever the SDK or the cloud
        quoted, no secret of this provider's reaches a message, the ledger or --debug output.
        """
        try:
            return call_with_timeout(self.profile.timeout, lambda: fn(*args, **kwargs))
        except WlcgError as exc:
            self.scrubbed(exc)
            raise
        except TimeoutError as exc:
            raise self.cloud_error(
                what,
                f"no answer within {self.profile.timeout} s",
                f"Check that the endpoint is up, or raise 'timeout' with 'wlcgcloud profile edit {self.name}'.",
            ) from exc
        except NotTheApi as exc:
            raise self.not_the_api(what, str(exc)) from exc
        except Exception as exc:
            raise self.scrubbed(self.translate(what, exc)) from exc

    def check_request(self, request: LaunchRequest) -> None:
        """Before a create: refuse user-data the cloud would refuse, and keep what it holds out of every error."""
        self.check_user_data(request.user_data)
        data = request.user_data or b""
        lines = data.decode("utf-8", "replace").splitlines() if data else []
        self.hide(base64.b64encode(data).decode() if data else None,
                  *(line.strip() for line in lines if len(line.strip()) >= USER_DATA_LINE))  # fmt: skip

    def check_user_data(self, data: bytes | None) -> None:
        """Refuse user-data the cloud would refuse, before anything is created."""
        if data is not None and len(data) > self.user_data_limit:
            raise PolicyError(
                f"profile '{self.name}': user-data is {len(data)} bytes; {self.kind} accepts at most "
                f"{self.user_data_limit}.",
                "Compress it (cloud-init accepts gzip) or ship less.",
            )

    def tls_error(self, what: str, exc: BaseException, where: str) -> CloudError | None:
        """The error for a certificate that did not verify, if that is what `exc` is.

        Call it only for failures of our own connection, never for a cloud's answer (which may
        quote a certificate error of its own, e.g. from fetching an image).
        """
        for seen in causes(exc):  # the SDKs wrap ssl's error in their own, sometimes several times over
            if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(seen):
                why = getattr(seen, "verify_message", None) or "certificate verify failed"
                return CloudError(
                    f"profile '{self.name}': {what}: the TLS certificate of {where} did not verify ({why}).",
                    f"If a CA your system does not trust signed it, point ca_bundle at that CA: "
                    f"'wlcgcloud profile edit {self.name} --ca-bundle FILE'.",
                )
        return None

    def detail(self, text: str) -> str:
        """A cloud's error text fit for one of our messages: `clean` with every secret this provider knows."""
        return clean(text, self._hidden)

    def cloud_error(self, what: str, detail: str, hint: str | None = None) -> CloudError:
        return CloudError(f"profile '{self.name}': {what}: {self.detail(detail)}", hint)

    def unreachable(self, what: str, where: str, exc: Exception) -> CloudError:
        """The error for a connection that failed: never made, or broken before the answer came."""
        hint = f"Run 'wlcgcloud doctor {self.name}' to see which step fails (DNS, TCP, TLS, clock, login)."
        if sent(exc):
            broke = f"no answer from {where}: the connection broke ({type(exc).__name__})."
            return self.cloud_error(what, broke, hint)
        return self.cloud_error(what, f"cannot reach {where}: {why_unreachable(exc)}.", hint)

    def not_the_api(self, what: str, detail: str) -> CloudError:
        """The error for an answer that is not the cloud API's (an HTML page, an empty body, garbage)."""
        return self.cloud_error(
            what,
            f"the answer is not the {self.kind} API's ({detail})",
            f"Check the endpoint of profile '{self.name}': something else (a proxy, a web page) answers there.",
        )

    def fetch_all(self, what: str, items: Callable[[], Iterable[T]], chunk: int = 500) -> list[T]:
        """Everything a paging SDK iterator yields, each chunk of `chunk` items within the timeout.

        The SDKs fetch pages lazily inside the iterator; with pages of `chunk` items (ask the
        SDK for them), bounding each chunk keeps `timeout` a bound per API call even for a
        project of thousands.
        """
        iterator = iter(self.call(what, items))
        out: list[T] = []
        while True:
            part = self.call(what, lambda: list(itertools.islice(iterator, chunk)))
            out.extend(part)
            if len(part) < chunk:
                return out
