#!/bin/bash
# wlcgcloud-bootstrap: Run a pilot script, fetched over https, with the forwarded credential in its environment.
# set PILOT_URL (required): https:// address of the pilot script (e.g. a DIRAC or PanDA pilot wrapper)
# set PILOT_SHA256: the script's sha256; when set, a script with any other hash is not run
# set PILOT_ARGS: arguments for the script, split as the shell splits them
# set PILOT_USER=root: the account that runs it (give it the credential with --credential-owner)
#
# Written by wlcgcloud; cloud-init runs it once, at the end of the first boot.
set -euo pipefail
. /run/wlcgcloud/bootstrap.env
# X509_USER_PROXY or BEARER_TOKEN_FILE, as wlcgcloud wrote them
[ -r /etc/profile.d/wlcgcloud.sh ] && . /etc/profile.d/wlcgcloud.sh

log() { echo "wlcgcloud-bootstrap(script): $*" | tee -a /var/log/wlcgcloud-bootstrap.log >&2; }

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
if [ "${PILOT_USER:-root}" != root ]; then
  chown -R "$PILOT_USER" "$workdir"
fi
log "starting $PILOT_URL as ${PILOT_USER:-root}"
cd "$workdir"
# shellcheck disable=SC2086  # PILOT_ARGS is split on purpose
if [ "${PILOT_USER:-root}" = root ]; then
  nohup "$pilot" ${PILOT_ARGS:-} >>/var/log/wlcgcloud-pilot.log 2>&1 &
else
  nohup runuser -u "$PILOT_USER" -- env X509_USER_PROXY="${X509_USER_PROXY:-}" BEARER_TOKEN_FILE="${BEARER_TOKEN_FILE:-}" \
    "$pilot" ${PILOT_ARGS:-} >>/var/log/wlcgcloud-pilot.log 2>&1 &
fi
