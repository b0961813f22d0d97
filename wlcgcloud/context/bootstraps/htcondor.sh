#!/bin/bash
# wlcgcloud-bootstrap: An HTCondor execute node that joins a pool.
# set COLLECTOR (required): the pool's central manager, host[:port]
# set POOL_TOKEN: an HTCondor IDTOKEN for the pool; without it the node authenticates with the forwarded credential
# set SLOTS=partitionable: partitionable (one slot holding the whole VM) or static (one slot per core)
# set START=TRUE: the START expression (which jobs the node accepts)
# set IDLE_SHUTDOWN=1200: seconds without a claim after which the node powers off (0: never)
# set GRACE_SECS=300: seconds of notice a job should keep in hand before shutdowntime ($MACHINEFEATURES/grace_secs)
# set CVMFS_REPOSITORIES: CernVM-FS repositories to mount before the node joins, comma-separated (e.g. atlas.cern.ch)
# set CVMFS_HTTP_PROXY=DIRECT: the CernVM-FS client's HTTP proxy (CVMFS_HTTP_PROXY syntax)
# set CVMFS_QUOTA_LIMIT=4000: the CernVM-FS cache size, MB
#
# Written by wlcgcloud; cloud-init runs it once, at the end of the first boot.
set -euo pipefail
# shellcheck source=/dev/null  # written by wlcgcloud's cloud-config
. /run/wlcgcloud/bootstrap.env
# shellcheck source=/dev/null
[ -r /etc/profile.d/wlcgcloud.sh ] && . /etc/profile.d/wlcgcloud.sh

log() { echo "wlcgcloud-bootstrap(htcondor): $*" | tee -a /var/log/wlcgcloud-bootstrap.log >&2; }
agent=/usr/local/sbin/wlcgcloud-vm  # written by wlcgcloud's cloud-config (docs/vm-side.md)

# Machine/Job Features first, then the agent's minute timer: drain requests, the lease, the message.
"$agent" boot
systemctl daemon-reload
systemctl enable --now wlcgcloud-vm.timer

if ! command -v condor_master >/dev/null 2>&1; then
  log "installing HTCondor"
  if command -v dnf >/dev/null 2>&1; then dnf -y install condor
  elif command -v apt-get >/dev/null 2>&1; then apt-get -y install htcondor
  else log "no condor_master and no package manager I know"; exit 1
  fi
fi

conf=/etc/condor/config.d/50-wlcgcloud.conf
mkdir -p /etc/condor/config.d /etc/condor/tokens.d
{
  echo "# written by wlcgcloud's htcondor bootstrap"
  echo "CONDOR_HOST = $COLLECTOR"
  echo "DAEMON_LIST = MASTER, STARTD"
  echo "START = ${START:-TRUE}"
  echo "SUSPEND = FALSE"
  echo "PREEMPT = FALSE"
  echo "KILL = FALSE"
  echo "STARTER_JOB_ENVIRONMENT = \"MACHINEFEATURES=/run/wlcgcloud/machinefeatures JOBOUTPUTS=/run/wlcgcloud/joboutputs\""
  echo "STARTD_HISTORY = \$(LOG)/startd_history"
  if [ "${SLOTS:-partitionable}" = static ]; then
    echo "NUM_SLOTS = \$(DETECTED_CPUS)"
  else
    echo "NUM_SLOTS = 1"
    echo "NUM_SLOTS_TYPE_1 = 1"
    echo "SLOT_TYPE_1 = 100%"
    echo "SLOT_TYPE_1_PARTITIONABLE = True"
  fi
  if [ "${IDLE_SHUTDOWN:-1200}" != 0 ]; then
    echo "STARTD_NOCLAIM_SHUTDOWN = ${IDLE_SHUTDOWN:-1200}"
    echo "MASTER.DAEMON_SHUTDOWN_FAST = (STARTD_StartTime =?= 0)"
    echo "DEFAULT_MASTER_SHUTDOWN_SCRIPT = /usr/local/sbin/wlcgcloud-poweroff"
  fi
} > "$conf"

if [ -n "${POOL_TOKEN:-}" ]; then
  umask 077
  printf '%s\n' "$POOL_TOKEN" > /etc/condor/tokens.d/wlcgcloud-pool.token
  echo "SEC_DEFAULT_AUTHENTICATION_METHODS = IDTOKENS" >> "$conf"
elif [ -n "${BEARER_TOKEN_FILE:-}" ]; then
  {
    echo "SEC_DEFAULT_AUTHENTICATION_METHODS = SCITOKENS"
    echo "SCITOKENS_FILE = $BEARER_TOKEN_FILE"
  } >> "$conf"
elif [ -n "${X509_USER_PROXY:-}" ]; then
  {
    echo "SEC_DEFAULT_AUTHENTICATION_METHODS = SSL"
    echo "AUTH_SSL_CLIENT_CERTFILE = $X509_USER_PROXY"
    echo "AUTH_SSL_CLIENT_KEYFILE = $X509_USER_PROXY"
    echo "AUTH_SSL_ALLOW_CLIENT_PROXY = True"
  } >> "$conf"
else
  log "no POOL_TOKEN and no forwarded credential: the collector must accept this node some other way"
fi

# The master runs this (execl, no arguments) as root when it exits: the node was idle, or drained.
printf '#!/bin/sh\nexec %s stop --idle\n' "$agent" > /usr/local/sbin/wlcgcloud-poweroff
chmod 0755 /usr/local/sbin/wlcgcloud-poweroff

# The node advertises itself only once its software is there.
if [ -n "${CVMFS_REPOSITORIES:-}" ] && ! "$agent" cvmfs; then
  log "CernVM-FS ($CVMFS_REPOSITORIES) did not mount; not joining the pool (see /var/log/wlcgcloud-vm.log)"
  "$agent" stop 500 "CernVM-FS repositories did not mount: $CVMFS_REPOSITORIES"
  exit 1
fi
log "joining the pool at $COLLECTOR"
systemctl enable --now condor
