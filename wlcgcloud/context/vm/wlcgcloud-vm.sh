#!/bin/bash
# wlcgcloud-vm: the agent wlcgcloud puts in each VM it launches with a bootstrap (docs/vm-side.md).
#
#   wlcgcloud-vm boot     write $MACHINEFEATURES (/run/wlcgcloud/machinefeatures) and export it
#   wlcgcloud-vm tick     (every minute, wlcgcloud-vm.timer) read the owner's drain request from the
#                         cloud's metadata, drain, power off when the work is done or the time is up
#   wlcgcloud-vm stop [CODE TEXT | --idle | --pilot-exit STATUS]
#                         leave the HEPiX shutdown message (console; OneGate on OpenNebula), power off
#   wlcgcloud-vm cvmfs    install and configure CernVM-FS for CVMFS_REPOSITORIES, wait until they mount
#
# What it reads: /run/wlcgcloud/vm.env (LEASE_SECONDS, BOOTSTRAP) and /run/wlcgcloud/bootstrap.env
# (GRACE_SECS, DRAIN_HOOK, CVMFS_*), both written by wlcgcloud's cloud-config and parsed, never
# sourced; the cloud's metadata: nothing it reads there is executed, a drain request is a time or
# nothing. It keeps its state in /run/wlcgcloud/vm/ and logs to /var/log/wlcgcloud-vm.log.
#
# Sandbox hooks, for tests (a VM sets none of them):
#   WLCGCLOUD_VM_ROOT       prefixes every path it reads or writes (/run, /etc, /var, the console)
#   WLCGCLOUD_METADATA_URL  replaces http://169.254.169.254 (EC2 IMDSv2, the Nova metadata service)
#   WLCGCLOUD_POWEROFF      replaces the power-off command, `systemctl poweroff`
#   WLCGCLOUD_CONSOLE       replaces /dev/console
#   WLCGCLOUD_CLOUD         ec2, openstack or opennebula instead of cloud-init's instance-data.json
#   WLCGCLOUD_CVMFS_WAIT    seconds to wait for the repositories to mount (default 600)
# Needs bash, coreutils, curl and python3 (always there: cloud-init is Python); 3.6 is enough.
set -uo pipefail
umask 022
export LC_ALL=C

R=${WLCGCLOUD_VM_ROOT:-}
MD=${WLCGCLOUD_METADATA_URL:-http://169.254.169.254}
CONSOLE=${WLCGCLOUD_CONSOLE:-$R/dev/console}
MF_PATH=/run/wlcgcloud/machinefeatures # as the payload sees it
JO_PATH=/run/wlcgcloud/joboutputs      # where any payload may leave its shutdown_message (sticky, world-writable)
RUN=$R/run/wlcgcloud
MF=$R$MF_PATH
STATE=$RUN/vm
LOG=$R/var/log/wlcgcloud-vm.log
MAXBYTES=65536
CODES=" 100 200 300 400 500 600 700 "

log() {
  mkdir -p "${LOG%/*}" 2>/dev/null
  # 0600: it holds what condor_off and the drain hook print
  (umask 077 && printf '%s wlcgcloud-vm[%s]: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$$" "$*" >>"$LOG") 2>/dev/null || true
}

# Untrusted text made fit for a log line: printable ASCII, at most $1 characters.
shown() { printf '%s' "$2" | tr -cd '\040-\176' | cut -c "1-$1"; }

# put FILE VALUE: write one value atomically.
put() {
  local tmp
  tmp=$(mktemp "$1.XXXXXX") || return 1
  printf '%s\n' "$2" >"$tmp" && chmod 0644 "$tmp" && mv -f "$tmp" "$1"
}

# get FILE: its first line, or nothing.
get() { [ -r "$1" ] && head -n 1 "$1" 2>/dev/null | head -c 200; }

is_int() { [[ $1 =~ ^[0-9]{1,12}$ ]]; }

# setting FILE KEY: KEY's value in a shell-quoted KEY=VALUE file (an `export ` prefix allowed), parsed.
setting() {
  [ -r "$1" ] || return 0
  python3 -c '
import shlex, sys
key = sys.argv[2]
with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
    for line in f.read(1 << 20).splitlines():
        name, sep, value = line.partition("=")
        name = name.strip()
        if name.startswith("export "):
            name = name[len("export "):].strip()
        if sep and name == key:
            try:
                print(" ".join(shlex.split(value)))
            except ValueError:
                pass
            break
' "$1" "$2" 2>/dev/null
}

cloud() {
  local name=${WLCGCLOUD_CLOUD:-}
  if [ -z "$name" ] && [ -r "$R/run/cloud-init/instance-data.json" ]; then
    name=$(head -c 4194304 "$R/run/cloud-init/instance-data.json" | python3 -c '
import json, sys
try:
    v1 = json.load(sys.stdin).get("v1") or {}
except Exception:
    v1 = {}
known = ("aws", "ec2", "openstack", "opennebula")
# cloud_name first; a config drive calls itself "configdrive" there, its platform is "openstack"
print(next((v for v in (v1.get("cloud_name"), v1.get("platform")) if v in known), ""))' 2>/dev/null)
  fi
  case "$name" in
    aws | ec2) echo ec2 ;;
    openstack) echo openstack ;;
    opennebula) echo opennebula ;;
    *) echo unknown ;;
  esac
}

# fetch OUT URL [CURL-ARGS...]: the reply's body into OUT, at most 64 KiB, within 10 s.
# Returns 0 for 2xx, 4 for 404, 1 for anything else (no answer, another status, too large).
fetch() {
  local out=$1 url=$2 hdr code="" proto rest curled
  shift 2
  hdr=$(mktemp "$STATE/.headers.XXXXXX") || return 1
  curl --silent --max-time 10 --connect-timeout 3 --max-filesize "$MAXBYTES" --proto '=http,https' \
    --dump-header "$hdr" --output - "$@" -- "$url" 2>/dev/null | head -c $((MAXBYTES + 1)) >"$out"
  curled=${PIPESTATUS[0]}
  while read -r proto rest; do
    case "$proto" in HTTP/*) code=${rest%% *} ;; esac
  done <"$hdr"
  rm -f "$hdr"
  # 63: a Content-Length past the bound; 23: head stopped reading at the bound; else no answer.
  if [ "$curled" = 63 ] || [ "$(wc -c <"$out")" -gt "$MAXBYTES" ]; then
    log "ignored a reply of more than $MAXBYTES bytes from $url"
    : >"$out"
    return 1
  fi
  if [ "$curled" != 0 ] && [ "$curled" != 23 ]; then
    log "no answer from $url (curl status $curled)"
    return 1
  fi
  case "$code" in
    2??) return 0 ;;
    404) return 4 ;;
    *) return 1 ;;
  esac
}

# The printable value in a file (a string at most 200 characters), or "<unprintable>".
PRINTABLE='
import sys
def emit(value):
    ok = isinstance(value, str) and len(value) <= 200 and all(32 <= ord(c) < 127 for c in value)
    print(value if ok else "<unprintable>")
'

onegate_context() { # sets OG_ENDPOINT OG_VMID OG_TOKEN, or returns 1
  local env=$R/var/run/one-context/one_env tokenfile=$R/var/run/one-context/token.txt mnt=""
  OG_ENDPOINT="" OG_VMID="" OG_TOKEN=""
  if [ ! -r "$env" ] || [ ! -r "$tokenfile" ]; then
    # No one-context: the CONTEXT CD-ROM, read-only, for just as long as it takes to read two files.
    if [ -e "$R/dev/disk/by-label/CONTEXT" ] && [ -z "$R" ]; then
      mnt=$(mktemp -d "$STATE/.context.XXXXXX") &&
        mount -o ro "$R/dev/disk/by-label/CONTEXT" "$mnt" 2>/dev/null &&
        env=$mnt/context.sh tokenfile=$mnt/token.txt
    fi
  fi
  OG_ENDPOINT=$(setting "$env" ONEGATE_ENDPOINT)
  OG_VMID=$(setting "$env" VMID)
  [ -r "$tokenfile" ] && OG_TOKEN=$(head -c 512 "$tokenfile" | tr -d '\r\n')
  if [ -n "$mnt" ]; then
    umount "$mnt" 2>/dev/null
    rmdir "$mnt" 2>/dev/null
  fi
  if ! [[ $OG_ENDPOINT =~ ^https?://([A-Za-z0-9.:_-]+|\[[0-9a-fA-F:]+\](:[0-9]+)?)(/[A-Za-z0-9._~/-]*)?$ ]] ||
    ! is_int "$OG_VMID" || ! [[ $OG_TOKEN =~ ^[A-Za-z0-9+/=._-]{1,512}$ ]]; then
    log "OneGate: no usable ONEGATE_ENDPOINT, VMID and token (CONTEXT needs TOKEN=YES)"
    return 1
  fi
}

onegate_headers() { printf 'X-ONEGATE-TOKEN: %s\nX-ONEGATE-VMID: %s\n' "$OG_TOKEN" "$OG_VMID"; }

# md_get NAME: this VM's value of NAME (drain-by, hs06) from the cloud's metadata, printed.
# Returns 0 with a value, 4 when there is none, 1 when the metadata could not be read.
md_get() {
  local name=$1 c out token rc
  c=$(cloud)
  out=$(mktemp "$STATE/.reply.XXXXXX") || return 1
  case "$c" in
    ec2)
      fetch "$out" "$MD/latest/api/token" -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 300'
      rc=$?
      token=$(head -c 512 "$out")
      if [ $rc != 0 ] || ! [[ $token =~ ^[A-Za-z0-9+/=._-]{1,512}$ ]]; then
        rm -f "$out"
        log "EC2: no IMDSv2 token"
        return 1
      fi
      fetch "$out" "$MD/latest/meta-data/tags/instance/wlcg:$name" \
        -H @<(printf 'X-aws-ec2-metadata-token: %s\n' "$token")
      rc=$?
      [ $rc = 0 ] && python3 -c "$PRINTABLE"'
emit(open(sys.argv[1], "rb").read().decode("utf-8", "replace"))' "$out"
      ;;
    openstack)
      fetch "$out" "$MD/openstack/latest/meta_data.json"
      rc=$?
      if [ $rc = 0 ]; then
        python3 -c "$PRINTABLE"'
import json
try:
    meta = json.load(open(sys.argv[1], encoding="utf-8")).get("meta") or {}
except Exception:
    sys.exit(1)
if sys.argv[2] not in meta:
    sys.exit(4)
emit(meta[sys.argv[2]])' "$out" "wlcg:$name"
        rc=$?
      fi
      ;;
    opennebula)
      if onegate_context; then
        fetch "$out" "$OG_ENDPOINT/vm" -H @<(onegate_headers)
        rc=$?
        if [ $rc = 0 ]; then
          python3 -c "$PRINTABLE"'
import json
try:
    template = json.load(open(sys.argv[1], encoding="utf-8"))["VM"]["USER_TEMPLATE"]
except Exception:
    sys.exit(1)
if sys.argv[2] not in template:
    sys.exit(4)
emit(template[sys.argv[2]])' "$out" "WLCG_$(printf '%s' "$name" | tr 'a-z-' 'A-Z_')"
          rc=$?
        fi
      else
        rc=1
      fi
      ;;
    *)
      rc=1
      ;;
  esac
  rm -f "$out"
  return $rc
}

# iso_epoch TEXT: the Unix time of an ISO 8601 UTC time with Z (2026-12-06T18:00:00Z), else fails.
iso_epoch() {
  [[ $1 =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$ ]] || return 1
  python3 -c '
import calendar, sys, time
print(calendar.timegm(time.strptime(sys.argv[1], "%Y-%m-%dT%H:%M:%SZ")))' "$1" 2>/dev/null
}

bootstrap_name() { setting "$RUN/vm.env" BOOTSTRAP; }

grace_secs() {
  local g
  g=$(setting "$RUN/bootstrap.env" GRACE_SECS)
  if is_int "$g"; then echo "$g"; else echo 300; fi
}

boot_time() {
  local t="" key value
  while read -r key value; do [ "$key" = btime ] && t=$value; done </proc/stat
  if is_int "$t"; then echo "$t"; else date +%s; fi
}

cmd_boot() {
  local booted lease n phys hs06 rc
  mkdir -p "$STATE" "$MF" || exit 1
  booted=$(get "$STATE/boot_time")
  if ! is_int "$booted"; then
    booted=$(boot_time)
    put "$STATE/boot_time" "$booted"
  fi
  lease=$(setting "$RUN/vm.env" LEASE_SECONDS)
  if is_int "$lease"; then
    put "$STATE/lease_end" $((booted + lease))
    earlier "$((booted + lease))"
  fi
  put "$MF/grace_secs" "$(grace_secs)"
  n=$(nproc --all)
  put "$MF/total_cpu" "$n"
  put "$MF/log_cores" "$n"
  put "$MF/jobslots" "$n"
  phys=$(lscpu -p=Core,Socket 2>/dev/null | while read -r line; do
    case "$line" in '#'* | '') ;; *) echo "$line" ;; esac
  done | sort -u | wc -l)
  if is_int "$phys" && [ "$phys" -gt 0 ]; then put "$MF/phys_cores" "$phys"; fi
  hs06=$(md_get hs06)
  rc=$?
  if [ $rc = 0 ]; then
    if [[ $hs06 =~ ^[0-9]{1,7}(\.[0-9]{1,4})?$ ]]; then
      put "$MF/hs06" "$hs06"
    else
      log "ignored a malformed wlcg:hs06: $(shown 40 "$hs06")"
    fi
  fi
  mkdir -p "$R$JO_PATH" && chmod 1777 "$R$JO_PATH"
  mkdir -p "$R/etc/profile.d"
  put "$R/etc/profile.d/wlcgcloud-mjf.sh" "export MACHINEFEATURES=$MF_PATH JOBOUTPUTS=$JO_PATH"
  local line wanted
  for wanted in "MACHINEFEATURES=$MF_PATH" "JOBOUTPUTS=$JO_PATH"; do
    local found=""
    if [ -r "$R/etc/environment" ]; then
      while IFS= read -r line; do [ "$line" = "$wanted" ] && found=1; done <"$R/etc/environment"
    fi
    [ -n "$found" ] || printf '%s\n' "$wanted" >>"$R/etc/environment"
  done
  log "boot: machine features in $MF_PATH${lease:+, lease ends at $((booted + lease))}"
}

# earlier T: move shutdowntime to T unless it is already earlier.
earlier() {
  local now
  now=$(get "$MF/shutdowntime")
  if ! is_int "$now" || [ "$1" -lt "$now" ]; then put "$MF/shutdowntime" "$1"; fi
}

# HTCondor: is a job running? condor_who asks the startd; with no startd answering (after
# `condor_off -peaceful -startd` it is gone once its jobs end) a condor_starter process would be one.
condor_busy() {
  local out rc comm
  out=$(timeout 60 condor_who -af JobId 2>/dev/null)
  rc=$?
  if [ $rc = 0 ]; then
    while read -r line; do
      case "$line" in '' | undefined) ;; *) touch "$STATE/ran_job"; return 0 ;; esac
    done <<<"$out"
    return 1
  fi
  for comm in /proc/[0-9]*/comm; do
    [ "$(cat "$comm" 2>/dev/null)" = condor_starter ] && return 0
  done
  return 1
}

pilot_running() {
  local pid
  [ -e "$STATE/pilot.exit" ] && return 1
  pid=$(get "$STATE/pilot.pid")
  is_int "$pid" && kill -0 "$pid" 2>/dev/null
}

work_running() {
  case "$(bootstrap_name)" in
    htcondor) condor_busy ;;
    script) pilot_running ;;
    *) return 1 ;;
  esac
}

drain_action() {
  local hook rc
  [ -e "$STATE/drain_action_done" ] && return 0
  case "$(bootstrap_name)" in
    htcondor)
      if timeout 120 condor_off -peaceful -startd >>"$LOG" 2>&1; then
        touch "$STATE/drain_action_done"
        log "drain: condor_off -peaceful -startd (running jobs finish, no new one starts)"
      else
        log "drain: condor_off -peaceful -startd failed; trying again next minute"
      fi
      ;;
    script)
      touch "$STATE/drain_action_done" # once, whatever the hook does
      hook=$(setting "$RUN/bootstrap.env" DRAIN_HOOK)
      if [ -n "$hook" ]; then
        timeout 600 bash -c "$hook" </dev/null >>"$LOG" 2>&1
        rc=$?
        log "drain: DRAIN_HOOK ran, status $rc"
      fi
      ;;
    *) touch "$STATE/drain_action_done" ;;
  esac
}

cmd_tick() {
  local now value rc deadline seen shutdown
  # /run is empty after a reboot: the machine features (and the lease, from the new boot) again
  [ -e "$STATE/boot_time" ] || cmd_boot
  mkdir -p "$STATE" "$MF" || exit 1
  if [ -e "$STATE/stopped" ]; then
    poweroff_now
    return
  fi
  now=$(date +%s)
  value=$(md_get drain-by)
  rc=$?
  if [ $rc = 0 ]; then
    if deadline=$(iso_epoch "$value") && is_int "$deadline"; then
      seen=$(get "$STATE/drain_deadline")
      if ! is_int "$seen" || [ "$deadline" -lt "$seen" ]; then
        put "$STATE/drain_deadline" "$deadline"
        log "drain requested by $value"
      fi
      earlier "$(get "$STATE/drain_deadline")"
    else
      log "ignored a malformed drain-by: $(shown 60 "$value")"
    fi
  fi
  if [ -e "$STATE/drain_deadline" ]; then
    drain_action
    if ! work_running; then
      cmd_stop
      return
    fi
  else
    work_running >/dev/null # notes that a job ran (HTCondor), for the idle code later
  fi
  shutdown=$(get "$MF/shutdowntime")
  if is_int "$shutdown" && [ "$now" -ge "$shutdown" ]; then
    log "shutdowntime $shutdown has passed"
    cmd_stop
  fi
}

# The reason the agent gives when nobody gave one: "CODE TEXT".
own_reason() {
  local mode=$1 status=${2:-0} now lease
  now=$(date +%s)
  lease=$(get "$STATE/lease_end")
  if [ "$mode" = pilot ] && [ "$status" != 0 ]; then
    echo "700 Pilot exited with status $status"
  elif [ -e "$STATE/drain_deadline" ]; then
    echo "100 Drained at the owner's request"
  elif is_int "$lease" && [ "$now" -ge "$lease" ]; then
    echo "100 Lease ended"
  elif [ "$mode" = pilot ]; then
    echo "200 Pilot completed"
  elif [ "$mode" = idle ]; then
    if [ -e "$STATE/ran_job" ] || [ -n "$(timeout 30 condor_history -startd -limit 1 -af ClusterId 2>/dev/null)" ]; then
      echo "200 Intended work completed"
    else
      echo "300 No more work"
    fi
  else
    echo "100 Shutdown requested by the host"
  fi
}

# The payload's own message, "NNN text", from the first file that holds one.
payload_reason() {
  local file line
  for file in "$RUN/shutdown_message" "$R$JO_PATH/shutdown_message" ${JOBOUTPUTS:+"$R$JOBOUTPUTS/shutdown_message"}; do
    # Written by the payload, maybe in a directory anyone may write: a plain file only, never a link
    # (a link to a secret would have its first line logged as malformed).
    if [ ! -f "$file" ] || [ -L "$file" ]; then continue; fi
    line=$(head -c 4096 "$file" | head -n 1 | tr -d '\r')
    if [[ $line =~ ^([0-9]{3})([[:space:]](.*))?$ ]] && [[ $CODES == *" ${BASH_REMATCH[1]} "* ]]; then
      echo "$line"
      return 0
    fi
    log "ignored a malformed $file: $(shown 60 "$line")"
  done
  return 1
}

cmd_stop() {
  local mode=host status=0 reason code text line body
  case "${1:-}" in
    "") ;;
    --idle) mode=idle ;;
    --pilot-exit)
      mode=pilot
      status=${2:-}
      is_int "$status" || status=1
      ;;
    *)
      if [[ $CODES == *" $1 "* ]]; then
        mode=given
        reason="$1 ${*:2}"
      else
        echo "usage: wlcgcloud-vm stop [CODE TEXT | --idle | --pilot-exit STATUS]" >&2
        exit 2
      fi
      ;;
  esac
  mkdir -p "$STATE"
  # One message per VM: whoever comes second (the timer, HTCondor's shutdown script) only powers off.
  if ! (set -o noclobber && : >"$STATE/stopped") 2>/dev/null; then
    log "stop: the message is already out; powering off"
    poweroff_now
    return
  fi
  if [ "$mode" != given ]; then
    reason=$(payload_reason) || reason=$(own_reason "$mode" "$status")
  fi
  code=${reason%% *}
  text=${reason#"$code"}
  text=$(shown 160 "${text#"${text%%[! ]*}"}")
  [ -n "$text" ] || text=$(own_text "$code")
  line="wlcgcloud-shutdown: $code $text"
  printf '%s\n' "$line" >"$STATE/stopped"
  printf '%s\n' "$line" >>"$CONSOLE" 2>/dev/null || log "stop: could not write to $CONSOLE"
  log "stop: $line"
  if [ "$(cloud)" = opennebula ] && onegate_context; then
    # OpenNebula template syntax: KEY=VALUE lines; a double-quoted value holds no " or \.
    # shellcheck disable=SC1003  # tr turns " into ' and \ into /
    body=$(printf 'WLCG_SHUTDOWN_CODE=%s\nWLCG_SHUTDOWN_MESSAGE="%s"' "$code" "$(printf '%s' "$text" | tr '"\\' "'/")")
    local out
    out=$(mktemp "$STATE/.reply.XXXXXX")
    if fetch "$out" "$OG_ENDPOINT/vm" -X PUT -H @<(onegate_headers) --data-binary "$body"; then
      log "stop: message set in OneGate"
    else
      log "stop: OneGate did not take the message"
    fi
    rm -f "$out"
  fi
  poweroff_now
}

own_text() {
  case "$1" in
    100) echo "Shutdown requested by the host" ;;
    200) echo "Intended work completed" ;;
    300) echo "No more work" ;;
    400) echo "Banned or disabled" ;;
    500) echo "Site or environment problem" ;;
    600) echo "Grid-wide problem" ;;
    *) echo "VM or application error" ;;
  esac
}

poweroff_now() {
  local -a command
  read -ra command <<<"${WLCGCLOUD_POWEROFF:-systemctl poweroff}"
  log "powering off: ${command[*]}"
  "${command[@]}" >>"$LOG" 2>&1
}

cmd_cvmfs() {
  local repos proxy quota wait configured="" deadline repo
  local -a list
  repos=$(setting "$RUN/bootstrap.env" CVMFS_REPOSITORIES)
  [ -n "$repos" ] || return 0
  proxy=$(setting "$RUN/bootstrap.env" CVMFS_HTTP_PROXY)
  proxy=${proxy:-DIRECT}
  quota=$(setting "$RUN/bootstrap.env" CVMFS_QUOTA_LIMIT)
  quota=${quota:-4000}
  local repos_re='^[a-z0-9][a-z0-9.-]*(,[a-z0-9][a-z0-9.-]*)*$' proxy_re='^[A-Za-z0-9.:/;|_@%=+-]+$'
  if ! [[ $repos =~ $repos_re ]] || ! is_int "$quota" || ! [[ $proxy =~ $proxy_re ]]; then
    log "cvmfs: CVMFS_REPOSITORIES, CVMFS_HTTP_PROXY or CVMFS_QUOTA_LIMIT is malformed"
    return 1
  fi
  IFS=, read -ra list <<<"$repos"
  if [ -e "$R/etc/cvmfs/default.local" ]; then
    configured="/etc/cvmfs/default.local is there"
  elif [ -r /proc/mounts ] && [ -z "$R" ] && [[ $(cat /proc/mounts) == *" /cvmfs/cernvm-prod.cern.ch "* ]]; then
    configured="CernVM"
  fi
  if [ -n "$configured" ]; then
    log "cvmfs: the image has a configured client ($configured); only waiting for $repos"
  else
    if ! command -v cvmfs_config >/dev/null 2>&1; then
      log "cvmfs: installing the client"
      if command -v dnf >/dev/null 2>&1; then
        dnf -y install cvmfs >>"$LOG" 2>&1
      elif command -v apt-get >/dev/null 2>&1; then
        apt-get -y install cvmfs >>"$LOG" 2>&1
      fi
      if ! command -v cvmfs_config >/dev/null 2>&1; then
        log "cvmfs: no cvmfs package found (dnf or apt-get); the image needs the CernVM-FS repository (cvmfs-release)"
        return 1
      fi
    fi
    mkdir -p "$R/etc/cvmfs"
    printf 'CVMFS_REPOSITORIES=%s\nCVMFS_HTTP_PROXY=%s\nCVMFS_QUOTA_LIMIT=%s\n' \
      "'$repos'" "'$proxy'" "$quota" >"$R/etc/cvmfs/default.local"
    cvmfs_config setup >>"$LOG" 2>&1 || { log "cvmfs: cvmfs_config setup failed"; return 1; }
  fi
  wait=${WLCGCLOUD_CVMFS_WAIT:-600}
  is_int "$wait" || wait=600
  deadline=$(($(date +%s) + wait))
  for repo in "${list[@]}"; do
    until cvmfs_config probe "$repo" >>"$LOG" 2>&1; do
      if [ "$(date +%s)" -ge "$deadline" ]; then
        log "cvmfs: $repo did not mount within $wait s"
        return 1
      fi
      sleep 10
    done
  done
  log "cvmfs: mounted $repos"
}

main() {
  mkdir -p "$STATE" 2>/dev/null
  case "${1:-}" in
    boot) cmd_boot ;;
    tick) cmd_tick ;;
    stop) cmd_stop "${@:2}" ;;
    cvmfs) cmd_cvmfs ;;
    *)
      echo "usage: wlcgcloud-vm boot | tick | stop [CODE TEXT | --idle | --pilot-exit STATUS] | cvmfs" >&2
      exit 2
      ;;
  esac
}

main "$@"
