#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for CI and the integration tests.
#
#   .ci/slurm.sh start    # munged + slurmctld + slurmd on localhost; idempotent
#   .ci/slurm.sh status   # exit 0 when the controller answers and the node is idle/mixed/allocated
#   .ci/slurm.sh stop     # stops what start started; idempotent
#   .ci/slurm.sh env      # prints `export SLURM_CONF=...` for clients (sbatch, squeue, submitit)
#
# Debian's slurm-wlm + munge, no systemd: the daemons are started directly. Everything slurm
# writes lives under $C2P_SLURM_DIR (default /tmp/c2p-slurm): slurm.conf, state, spool, logs,
# pid files. Clients find the config through SLURM_CONF (this machine has no
# /etc/slurm/slurm.conf, and we do not write one: the cluster is a test fixture, not a system
# service). ProctrackType=proctrack/linuxproc and TaskPlugin=task/none because containers
# rarely give us a writable cgroup tree. One partition, "debug", holds this machine's CPUs.
# Must run as root (munged runs as the munge user, slurmd must be able to become any user).
set -euo pipefail

STATE="${C2P_SLURM_DIR:-/tmp/c2p-slurm}"
CONF="$STATE/slurm.conf"
NODE="$(hostname -s)"
PARTITION="${C2P_SLURM_PARTITION:-debug}"
CTLD_PORT="${C2P_SLURMCTLD_PORT:-6817}"
SLURMD_PORT="${C2P_SLURMD_PORT:-6818}"
MUNGE_SOCKET="/run/munge/munge.socket.2"
# shellcheck source=slurm-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm-common.sh"

log() { echo "[c2p slurm] $*" >&2; }

pid_alive() {  # pid_alive FILE: the process whose pid FILE holds is running
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

write_conf() {
  local cpus mem_mb
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # GNU nproc obeys OMP_NUM_THREADS
  # Leave 10% of RAM to the OS; memory is not a consumable resource here (CR_CPU), the value
  # only bounds --mem requests so that an impossible one is refused at submission.
  mem_mb="$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)"
  mkdir -p "$STATE/ctld" "$STATE/spool" "$STATE/log"
  {
    cat <<EOF
# Written by .ci/slurm.sh: a single-node test cluster on $NODE.
ClusterName=c2p
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ReturnToService=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    slurm_common_conf "$MUNGE_SOCKET"
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

start_munge() {
  if munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mungekey -c -k /etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged --socket="$MUNGE_SOCKET"
  for _ in $(seq 50); do
    munge -n -S "$MUNGE_SOCKET" 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  log "munged did not come up (see /var/log/munge/munged.log)"
  return 1
}

node_ready() {
  local state
  state="$(SLURM_CONF="$CONF" sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -1)"
  case "$state" in idle* | mixed* | allocated* | completing*) return 0 ;; *) return 1 ;; esac
}

cmd_start() {
  [ "$(id -u)" -eq 0 ] || { log "must run as root (munged/slurmd setup)"; exit 1; }
  start_munge
  if pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && node_ready; then
    log "already running ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  # Half-up (one daemon died): restart both from a clean state.
  cmd_stop >/dev/null 2>&1 || true
  write_conf
  log "starting slurmctld and slurmd (state in $STATE)"
  # -c: clear previous job state, a fresh test cluster every start.
  /usr/sbin/slurmctld -c -f "$CONF"
  /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 150); do
    if node_ready; then
      log "up: partition $PARTITION, node $NODE, $(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc) CPUs"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    # A node that registered DOWN (e.g. after an unclean stop) is resumed once.
    SLURM_CONF="$CONF" scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
    sleep 0.2
  done
  log "node $NODE did not become idle; logs: $STATE/log/"
  tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
  return 1
}

stop_pidfile() {  # stop_pidfile FILE NAME
  local f="$1" name="$2" pid
  if pid_alive "$f"; then
    pid="$(cat "$f")"
    log "stopping $name ($pid)"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

cmd_stop() {
  if [ -f "$CONF" ] && pid_alive "$STATE/slurmctld.pid"; then
    # Cancel what is still queued or running, so no job step outlives the cluster.
    SLURM_CONF="$CONF" scancel --full --quiet --partition="$PARTITION" 2>/dev/null || true
    SLURM_CONF="$CONF" scancel --quiet --partition="$PARTITION" 2>/dev/null || true
    sleep 1
  fi
  stop_pidfile "$STATE/slurmd.pid" slurmd
  stop_pidfile "$STATE/slurmctld.pid" slurmctld
  # munged is left running: it is a shared system service and cheap; a second start reuses it.
}

cmd_status() {
  if [ -f "$CONF" ] && pid_alive "$STATE/slurmctld.pid" && pid_alive "$STATE/slurmd.pid" && node_ready; then
    echo "running: SLURM_CONF=$CONF"
    SLURM_CONF="$CONF" sinfo
    return 0
  fi
  echo "not running"
  return 1
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
