#!/usr/bin/env bash
# A real single-node SLURM on this machine, for tests and for trying the cluster path locally.
#   scripts/local_slurm.sh up      install (Debian packages) and start munged, slurmctld, slurmd
#   scripts/local_slurm.sh down    stop exactly the daemons `up` started (by pid file)
#   scripts/local_slurm.sh status  show the partition
# Needs root (it installs packages and writes /etc/slurm/slurm.conf). State and logs live in
# $UNLOCK_SLURM_DIR (default /tmp/unlock-slurm). Accounting is off, so `sacct` fails: submitit
# falls back to squeue/scontrol for job state.
set -euo pipefail

STATE_DIR=${UNLOCK_SLURM_DIR:-/tmp/unlock-slurm}
CONF=/etc/slurm/slurm.conf
MARKER="# written by unlock-harness scripts/local_slurm.sh"
HOST=$(hostname -s)

log() { echo "[local-slurm] $*"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  log "installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
  if [ -f "$CONF" ] && ! grep -q "$MARKER" "$CONF"; then
    echo "refusing to overwrite $CONF: it was not written by this script" >&2
    exit 1
  fi
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p /etc/slurm "$STATE_DIR"/{ctld,spool}
  cat > "$CONF" <<CONF
$MARKER
ClusterName=unlock-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
MinJobAge=600
NodeName=$HOST CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}

start_munge() {
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  if [ -f "$STATE_DIR/munged.pid" ] && kill -0 "$(cat "$STATE_DIR/munged.pid")" 2>/dev/null; then
    return
  fi
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
  sleep 1
  cp /run/munge/munged.pid "$STATE_DIR/munged.pid"
}

wait_for_node() {
  for _ in $(seq 1 60); do
    if sinfo -h -N -o "%T" 2>/dev/null | grep -qE "^(idle|mixed|allocated)"; then
      return 0
    fi
    sleep 1
  done
  echo "the local SLURM node did not become idle; see $STATE_DIR/*.log" >&2
  sinfo -N -l >&2 || true
  return 1
}

up() {
  install_packages
  write_config
  start_munge
  if ! { [ -f "$STATE_DIR/slurmctld.pid" ] && kill -0 "$(cat "$STATE_DIR/slurmctld.pid")" 2>/dev/null; }; then
    slurmctld -f "$CONF"
  fi
  if ! { [ -f "$STATE_DIR/slurmd.pid" ] && kill -0 "$(cat "$STATE_DIR/slurmd.pid")" 2>/dev/null; }; then
    slurmd -f "$CONF"
  fi
  wait_for_node
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
  log "up: $(sinfo -h -o '%P %a %D %T')"
}

stop_pidfile() {
  local name=$1 file=$2
  if [ -f "$file" ]; then
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      log "stopped $name ($pid)"
    fi
    rm -f "$file"
  fi
}

down() {
  stop_pidfile slurmd "$STATE_DIR/slurmd.pid"
  stop_pidfile slurmctld "$STATE_DIR/slurmctld.pid"
  stop_pidfile munged "$STATE_DIR/munged.pid"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) sinfo -N -l ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
