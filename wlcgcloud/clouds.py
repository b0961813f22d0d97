"""What each kind of cloud is and can do, as data: the one place the domain learns a cloud's ways.

The domain and the commands never compare a profile's provider with a cloud's name: they look
its `Cloud` up here (`cloud_of(profile)`) and ask it. A capability a cloud lacks is declared in
`cannot`, with the reason a command shows. A fourth cloud is one more entry (and its provider
module). Plain data, cheap to import, below every other layer but the basics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Capabilities a command may need that not every cloud has (the keys of `Cloud.cannot`).
SPOT = "spot instances"
CONSOLE_LOG = "console log"


@dataclass(frozen=True)
class SecretSource:
    """A kind of login of a cloud: what its secret is, and where the cloud's own tools keep it."""

    label: str  # what the secret is, in prompts and hints (never the value)
    variable: str  # the environment variable its own tools read it from
    identity_variable: str | None = None  # the variable naming whose secret that is
    identity_key: str | None = None  # the profile setting naming the same identity
    is_file: bool = False  # `variable` names a file holding user:secret, not the secret


@dataclass(frozen=True)
class Cloud:
    """One kind of cloud, as the rest of wlcgcloud needs to know it."""

    name: str  # the `provider` value of a profile
    title: str  # as people write it
    url_key: str  # the setting naming the endpoint its SDK talks to first
    default_url: str | None  # that endpoint when the setting is absent ({region} filled in), else None
    network_key: str  # the setting naming what instances attach to
    flavor_keys: tuple[str, ...]  # the settings naming the default flavor, first found wins
    usage_source: str  # where `usage` reads this cloud's history
    forgets_ended: bool  # it forgets ended instances soon: usage adds the ledger's memory of them
    intervals_per_instance: bool  # usage: one history record per deployment, so several per instance
    over_plain_http: str  # what an http:// endpoint exposes (doctor's TLS step)
    secrets: Mapping[str, SecretSource] = field(default_factory=dict)  # by auth type; "" when it has one login
    secret_holds_user: bool = False  # a secret file may say `user:secret` (the ONE_AUTH format)
    region_pattern: str | None = None  # what a region name must look like, where the SDK is strict
    cannot: Mapping[str, str] = field(default_factory=dict)  # capability -> why this cloud has none

    def can(self, capability: str) -> bool:
        return capability not in self.cannot

    def endpoint(self, settings: Mapping[str, Any]) -> str:
        """The URL the SDK talks to first, from a profile's settings."""
        given = settings.get(self.url_key)
        if given:
            return str(given)
        return (self.default_url or "").format(region=settings.get("region"))

    def default_flavor(self, settings: Mapping[str, Any]) -> str | None:
        return next((str(settings[k]) for k in self.flavor_keys if settings.get(k)), None)

    def where(self, settings: Mapping[str, Any]) -> str:
        """A short 'where is it' for listings: the region (and endpoint) or the endpoint."""
        if self.default_url:
            endpoint = settings.get(self.url_key)
            return str(settings.get("region")) + (f" @ {endpoint}" if endpoint else "")
        return self.endpoint(settings)


CLOUDS: dict[str, Cloud] = {
    "ec2": Cloud(
        name="ec2",
        title="EC2",
        url_key="endpoint_url",
        default_url="https://ec2.{region}.amazonaws.com",
        network_key="subnet",
        flavor_keys=("flavor",),
        usage_source="EC2 DescribeInstances",
        forgets_ended=True,
        intervals_per_instance=False,
        over_plain_http="requests travel unencrypted; SigV4 sends no secret key, but the key id and every "
        "answer are readable",
        region_pattern=r"(?![0-9]+$)(?!-)[a-zA-Z0-9-]{1,63}(?<!-)",  # botocore's: a DNS label
        secrets={
            "": SecretSource("EC2 secret access key", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "access_key_id"),
        },
    ),
    "openstack": Cloud(
        name="openstack",
        title="OpenStack",
        url_key="auth_url",
        default_url=None,
        network_key="network",
        flavor_keys=("flavor",),
        usage_source="Nova os-simple-tenant-usage",
        forgets_ended=False,
        intervals_per_instance=False,
        over_plain_http="the password or token travels in clear text",
        cannot={SPOT: "OpenStack has no spot market; spot instances exist on EC2 only"},
        secrets={
            "password": SecretSource("OpenStack password", "OS_PASSWORD", "OS_USERNAME", "username"),
            "v3applicationcredential": SecretSource(
                "OpenStack application credential secret",
                "OS_APPLICATION_CREDENTIAL_SECRET",
                "OS_APPLICATION_CREDENTIAL_ID",
                "application_credential_id",
            ),
            "v3oidcaccesstoken": SecretSource("OIDC access token", "OS_ACCESS_TOKEN"),
        },
    ),
    "opennebula": Cloud(
        name="opennebula",
        title="OpenNebula",
        url_key="endpoint",
        default_url=None,
        network_key="network",
        flavor_keys=("flavor", "vm_template"),
        usage_source="OpenNebula vmpool.accounting",
        forgets_ended=False,
        intervals_per_instance=True,
        over_plain_http="the password or token travels in clear text",
        cannot={
            SPOT: "OpenNebula has no spot market; spot instances exist on EC2 only",
            CONSOLE_LOG: "OpenNebula has no console-log call in its API",
        },
        secrets={
            "": SecretSource("OpenNebula password or login token", "ONE_AUTH", identity_key="username", is_file=True),
        },
        secret_holds_user=True,
    ),
}


def cloud_of(profile: Any) -> Cloud:
    """The Cloud of a profile (anything with a `provider` attribute naming one)."""
    return CLOUDS[profile.provider]
