#!/bin/bash
# wlcgcloud-bootstrap: Run a pilot script, fetched over https, with the forwarded credential in its environment.
# set PILOT_URL (required): https:// address of the pilot script (e.g. a DIRAC or PanDA pilot wrapper)
# set PILOT_SHA256: the script's sha256; when set, a script with any other hash is not run
# set PILOT_ARGS: arguments for the script, split as the shell splits them
# set PILOT_USER=root: the account that runs it (give it the credential with --credential-owner)
# set POWEROFF=yes: yes powers the VM off when the pilot exits (code 200 for status 0, else 700); no leaves it up
# set DRAIN_HOOK: a command run once, as root, when the owner asks the VM to drain (e.g. tell the pilot to stop)
# set GRACE_SECS=300: seconds of notice a job should keep in hand before shutdowntime ($MACHINEFEATURES/grace_secs)
# set CVMFS_REPOSITORIES: CernVM-FS repositories to mount before the pilot starts, comma-separated (e.g. lhcb.cern.ch)
# set CVMFS_HTTP_PROXY=DIRECT: the CernVM-FS client's HTTP proxy (CVMFS_HTTP_PROXY syntax)
# set CVMFS_QUOTA_LIMIT=4000: the CernVM-FS cache size, MB
#
# Written by wlcgcloud; cloud-init runs it once, at the end of the first boot.
set -euo pipefail
# shellcheck source=/dev/null  # written by wlcgcloud's cloud-config
. /run/wlcgcloud/bootstrap.env
# X509_USER_PROXY or BEARER_TOKEN_FILE, as wlcgcloud wrote them
# shellcheck source=/dev/null
[ -r /etc/profile.d/wlcgcloud.sh ] && . /etc/profile.d/wlcgcloud.sh

log() { echo "wlcgcloud-bootstrap(script): $*" | tee -a /var/log/wlcgcloud-bootstrap.log >&2; }
agent=/usr/local/sbin/wlcgcloud-vm  # written by wlcgcloud's cloud-config (docs/vm-side.md)
state=/run/wlcgcloud/vm             # the agent's: it watches pilot.pid and pilot.exit

# Machine/Job Features first, then the agent's minute timer: drain requests, the lease, the message.
"$agent" boot
systemctl daemon-reload
systemctl enable --now wlcgcloud-vm.timer
export MACHINEFEATURES=/run/wlcgcloud/machinefeatures

case "$PILOT_URL" in
  https://*) ;;
  *) log "PILOT_URL must be an https:// address; not running it"; exit 1 ;;
esac

workdir=$(mktemp -d /run/wlcgcloud/pilot.XXXXXX)
pilot="$workdir/pilot"
curl --fail --silent --show-error --location --proto '=https' --retry 5 --output "$pilot" "$PILOT_URL"
if [ -n "${PILOT_SHA256:-}" ]; then
  echo "$PILOT_SHA256  $pilot" | sha256sum --check --status || { log "sha256 mismatch for $PILOT_URL; not running it"; exit 1; }
fi
chmod 0755 "$pilot"
if [ -n "${CVMFS_REPOSITORIES:-}" ] && ! "$agent" cvmfs; then
  log "CernVM-FS ($CVMFS_REPOSITORIES) did not mount; not starting the pilot (see /var/log/wlcgcloud-vm.log)"
  "$agent" stop 500 "CernVM-FS repositories did not mount: $CVMFS_REPOSITORIES"
  exit 1
fi
if [ "${PILOT_USER:-root}" != root ]; then
  chown -R "$PILOT_USER" "$workdir"
fi
log "starting $PILOT_URL as ${PILOT_USER:-root}"
cd "$workdir"
# The pilot runs in the background (cloud-init waits for nothing); when it exits, its status is
# noted for the agent and, with POWEROFF=yes, the VM powers off with a message that says how it went.
run_pilot() {
  local status=0
  trap '' HUP  # as nohup would
  # shellcheck disable=SC2086  # PILOT_ARGS is split on purpose
  if [ "${PILOT_USER:-root}" = root ]; then
    "$pilot" ${PILOT_ARGS:-} || status=$?
  else
    runuser -u "$PILOT_USER" -- env X509_USER_PROXY="${X509_USER_PROXY:-}" BEARER_TOKEN_FILE="${BEARER_TOKEN_FILE:-}" \
      MACHINEFEATURES="$MACHINEFEATURES" "$pilot" ${PILOT_ARGS:-} || status=$?
  fi
  echo "$status" > "$state/pilot.exit"
  log "the pilot exited with status $status"
  if [ "${POWEROFF:-yes}" = yes ]; then
    "$agent" stop --pilot-exit "$status"
  fi
}
mkdir -p "$state"
run_pilot </dev/null >>/var/log/wlcgcloud-pilot.log 2>&1 &
echo $! > "$state/pilot.pid"
