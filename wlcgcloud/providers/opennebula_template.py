"""What OpenNebula documents and its XML-RPC answers hold, as data and small pure functions.

VM states (OpenNebula 7.0 "Virtual Machine States") and what they mean to us, the template
syntax oned parses, and the shapes pyone gives back. No call to the cloud is made here.
"""

from __future__ import annotations

from typing import Any

from wlcgcloud.errors import UsageError

# VM STATE and, while ACTIVE, LCM_STATE, by number (OpenNebula 7.0 "Virtual Machine States").
VM_STATES = ("INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED", "POWEROFF",
             "UNDEPLOYED", "CLONING", "CLONING_FAILURE")  # fmt: skip
LCM_STATES = (
    "LCM_INIT", "PROLOG", "BOOT", "RUNNING", "MIGRATE", "SAVE_STOP", "SAVE_SUSPEND", "SAVE_MIGRATE",
    "PROLOG_MIGRATE", "PROLOG_RESUME", "EPILOG_STOP", "EPILOG", "SHUTDOWN", "CANCEL", "FAILURE",
    "CLEANUP_RESUBMIT", "UNKNOWN", "HOTPLUG", "SHUTDOWN_POWEROFF", "BOOT_UNKNOWN", "BOOT_POWEROFF",
    "BOOT_SUSPENDED", "BOOT_STOPPED", "CLEANUP_DELETE", "HOTPLUG_SNAPSHOT", "HOTPLUG_NIC", "HOTPLUG_SAVEAS",
    "HOTPLUG_SAVEAS_POWEROFF", "HOTPLUG_SAVEAS_SUSPENDED", "SHUTDOWN_UNDEPLOY", "EPILOG_UNDEPLOY",
    "PROLOG_UNDEPLOY", "BOOT_UNDEPLOY", "HOTPLUG_PROLOG_POWEROFF", "HOTPLUG_EPILOG_POWEROFF", "BOOT_MIGRATE",
    "BOOT_FAILURE", "BOOT_MIGRATE_FAILURE", "PROLOG_MIGRATE_FAILURE", "PROLOG_FAILURE", "EPILOG_FAILURE",
    "EPILOG_STOP_FAILURE", "EPILOG_UNDEPLOY_FAILURE", "PROLOG_MIGRATE_POWEROFF", "PROLOG_MIGRATE_POWEROFF_FAILURE",
    "PROLOG_MIGRATE_SUSPEND", "PROLOG_MIGRATE_SUSPEND_FAILURE", "BOOT_UNDEPLOY_FAILURE", "BOOT_STOPPED_FAILURE",
    "PROLOG_RESUME_FAILURE", "PROLOG_UNDEPLOY_FAILURE", "DISK_SNAPSHOT_POWEROFF", "DISK_SNAPSHOT_REVERT_POWEROFF",
    "DISK_SNAPSHOT_DELETE_POWEROFF", "DISK_SNAPSHOT_SUSPENDED", "DISK_SNAPSHOT_REVERT_SUSPENDED",
    "DISK_SNAPSHOT_DELETE_SUSPENDED", "DISK_SNAPSHOT", "DISK_SNAPSHOT_REVERT", "DISK_SNAPSHOT_DELETE",
    "PROLOG_MIGRATE_UNKNOWN", "PROLOG_MIGRATE_UNKNOWN_FAILURE", "DISK_RESIZE", "DISK_RESIZE_POWEROFF",
    "DISK_RESIZE_UNDEPLOYED", "HOTPLUG_NIC_POWEROFF", "HOTPLUG_RESIZE", "HOTPLUG_SAVEAS_UNDEPLOYED",
    "HOTPLUG_SAVEAS_STOPPED", "BACKUP", "BACKUP_POWEROFF", "RESTORE",
)  # fmt: skip
# Ours, for the states that are not plain "running while ACTIVE": what the VM is doing from
# its user's point of view (a snapshot of a powered-off VM leaves it stopped, a boot is pending).
VM_STATE_OURS = {"INIT": "pending", "PENDING": "pending", "HOLD": "pending", "CLONING": "pending",
                 "STOPPED": "stopped", "SUSPENDED": "stopped", "POWEROFF": "stopped", "UNDEPLOYED": "stopped",
                 "DONE": "terminated", "FAILED": "error", "CLONING_FAILURE": "error"}  # fmt: skip
LCM_PENDING = {"LCM_INIT", "PROLOG", "BOOT", "PROLOG_RESUME", "CLEANUP_RESUBMIT", "BOOT_UNKNOWN", "BOOT_POWEROFF",
               "BOOT_SUSPENDED", "BOOT_STOPPED", "PROLOG_UNDEPLOY", "BOOT_UNDEPLOY"}  # fmt: skip
LCM_STOPPING = {"SAVE_STOP", "SAVE_SUSPEND", "EPILOG_STOP", "EPILOG", "SHUTDOWN", "CANCEL", "SHUTDOWN_POWEROFF",
                "CLEANUP_DELETE", "SHUTDOWN_UNDEPLOY", "EPILOG_UNDEPLOY"}  # fmt: skip
LCM_STOPPED = {"HOTPLUG_SAVEAS_POWEROFF", "HOTPLUG_SAVEAS_SUSPENDED", "HOTPLUG_PROLOG_POWEROFF",
               "HOTPLUG_EPILOG_POWEROFF", "PROLOG_MIGRATE_POWEROFF", "PROLOG_MIGRATE_SUSPEND",
               "DISK_SNAPSHOT_POWEROFF", "DISK_SNAPSHOT_REVERT_POWEROFF", "DISK_SNAPSHOT_DELETE_POWEROFF",
               "DISK_SNAPSHOT_SUSPENDED", "DISK_SNAPSHOT_REVERT_SUSPENDED", "DISK_SNAPSHOT_DELETE_SUSPENDED",
               "DISK_RESIZE_POWEROFF", "DISK_RESIZE_UNDEPLOYED", "HOTPLUG_NIC_POWEROFF", "HOTPLUG_SAVEAS_UNDEPLOYED",
               "HOTPLUG_SAVEAS_STOPPED", "BACKUP_POWEROFF", "RESTORE"}  # fmt: skip
LCM_UNKNOWN = {"UNKNOWN", "PROLOG_MIGRATE_UNKNOWN"}


def vm_state(state: int, lcm: int) -> tuple[str, str]:
    """(ours, OpenNebula's words) for a VM's STATE and LCM_STATE."""
    if not 0 <= state < len(VM_STATES):
        return "unknown", str(state)
    name = VM_STATES[state]
    if name != "ACTIVE":
        return VM_STATE_OURS.get(name, "unknown"), name
    if not 0 <= lcm < len(LCM_STATES):
        return "unknown", f"ACTIVE/{lcm}"
    sub = LCM_STATES[lcm]
    words = f"ACTIVE/{sub}"
    if sub == "FAILURE" or sub.endswith("_FAILURE"):
        return "error", words
    for group, ours in ((LCM_PENDING, "pending"), (LCM_STOPPING, "stopping"), (LCM_STOPPED, "stopped"),
                        (LCM_UNKNOWN, "unknown")):  # fmt: skip
        if sub in group:
            return ours, words
    return "running", words  # RUNNING, MIGRATE, HOTPLUG*, DISK_SNAPSHOT*, DISK_RESIZE, BACKUP, ...


def as_list(value: Any) -> list[Any]:
    """pyone gives one NIC/DISK as a dict and several as a list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def int_or_none(value: Any) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def vcpus_of(body: Any) -> int:
    """VCPU, else 1: CPU is a share of physical CPU (0.5, 4), not a count of virtual ones."""
    return int_or_none(body.get("VCPU")) or 1


def quoted(value: str, key: str) -> str:
    """The value of attribute `key` in OpenNebula template syntax.

    oned's template parser knows one escape inside double quotes, `\\"` for `"`; a backslash
    is otherwise literal. So a value ending in a backslash would escape our closing quote, and
    `]]>` ends the CDATA oned wraps values in: both are refused, never mangled.
    """
    if value.endswith("\\") or "]]>" in value:
        raise UsageError(f"the value of {key} cannot be written in an OpenNebula template (it ends in \\ or has ]]>).")
    return '"' + value.replace('"', '\\"') + '"'


def vector(values: dict[str, Any]) -> str:
    return "[" + ",".join(f"{k}={quoted(str(v), k)}" for k, v in values.items()) + "]"
