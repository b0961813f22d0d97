"""The shared parts of the provider layer: error texts, idempotency keys, deadlines, state tables."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from wlcgcloud.providers.answers import clean
from wlcgcloud.providers.base import STATES, LaunchRequest, aware, call_with_timeout

from conftest import World, write_profiles


def test_clean_never_shows_an_echoed_value_and_stays_one_short_line() -> None:
    nova = "Invalid input for field/attribute user_data. Value: UEFTU1dPUkQ9aHVudGVyMgo=" + "A" * 5000
    assert clean(nova) == "Invalid input for field/attribute user_data. Value: (not shown)"
    boto = "Parameter validation failed:\nInvalid type for parameter UserData, value: secret, type: int"
    assert "secret" not in clean(boto) and "\n" not in clean(boto)
    long = "x " * 400
    assert len(clean(long)) == 300 and clean(long).endswith("…")
    assert clean("Quota exceeded for instances: Requested 3") == "Quota exceeded for instances: Requested 3"


def test_launch_token_ignores_the_moment_but_not_the_request() -> None:
    base = LaunchRequest("f-vm", "img", "m1", 3, b"#cloud-config\n", {"wlcg:fleet": "f", "wlcg:created": "t1"})
    retry = LaunchRequest(
        "f-vm", "img", "m1", 3, b"#cloud-config\n", {"wlcg:fleet": "f", "wlcg:created": "t2", "wlcg:lease-until": "x"}
    )
    assert base.token == retry.token and len(base.token) == 32
    for changed in (
        LaunchRequest("f-vm", "img", "m1", 4, b"#cloud-config\n", {"wlcg:fleet": "f"}),
        LaunchRequest("f-vm", "img", "m1", 3, b"#cloud-config\nx", {"wlcg:fleet": "f"}),
        LaunchRequest("f-vm", "img2", "m1", 3, b"#cloud-config\n", {"wlcg:fleet": "f"}),
        LaunchRequest("f-vm", "img", "m1", 3, b"#cloud-config\n", {"wlcg:fleet": "g"}),
    ):
        assert changed.token != base.token


def test_within_bounds_a_stuck_call_and_passes_results_and_errors() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        call_with_timeout(0.2, lambda: release.wait(10))
    assert time.monotonic() - started < 1
    release.set()
    assert call_with_timeout(1, lambda: 42) == 42
    with pytest.raises(KeyError):
        call_with_timeout(1, lambda: {}["missing"])


def test_naive_times_are_utc() -> None:
    assert aware(datetime(2026, 11, 24, 12)).tzinfo is UTC
    moment = datetime(2026, 11, 24, 12, tzinfo=UTC)
    assert aware(moment) is moment


def test_every_opennebula_state_maps_to_one_of_ours() -> None:
    from wlcgcloud.providers.opennebula_template import LCM_STATES, VM_STATES, vm_state

    assert len(LCM_STATES) == 72 and LCM_STATES[36] == "BOOT_FAILURE" and LCM_STATES[69] == "BACKUP"
    for state in range(len(VM_STATES)):
        for lcm in range(len(LCM_STATES) if VM_STATES[state] == "ACTIVE" else 1):
            ours, words = vm_state(state, lcm)
            assert ours in STATES and words
    failures = [n for n in LCM_STATES if n.endswith("FAILURE")]
    assert all(vm_state(3, LCM_STATES.index(n))[0] == "error" for n in failures)
    assert vm_state(3, 99) == ("unknown", "ACTIVE/99") and vm_state(42, 0) == ("unknown", "42")


def test_reusing_gives_a_profile_the_same_provider_until_its_secret_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wlcgcloud.config import load_config
    from wlcgcloud.providers import connect, reusing

    write_profiles(world, {"aws": {"provider": "ec2", "region": "eu-west-1", "access_key_id": "AKIAREUSE"}})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "first-secret")
    profile = load_config().profile("aws")
    assert connect(profile) is not connect(profile)  # outside reusing(): a provider each time
    with reusing():
        first = connect(profile)
        assert connect(profile) is first
        monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "rotated-secret")
        second = connect(profile)
        assert second is not first and second.secret.value == "rotated-secret" and connect(profile) is second
    assert connect(profile) is not second
