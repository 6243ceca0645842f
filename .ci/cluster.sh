#!/usr/bin/env bash
# A real multi-host SLURM cluster on this one machine, for the multi-host integration tests.
#
#   .ci/cluster.sh up N           # hosts c2p-h1..c2p-hN (N = 1..8; 2 or 3 in CI) + controller; idempotent
#   .ci/cluster.sh status         # exit 0 when the controller answers and every host's slurmd is idle/mixed/allocated
#   .ci/cluster.sh kill-host NAME # the host dies: SIGKILL every process in its namespace, its link goes down
#   .ci/cluster.sh down           # stops what up started, removes namespaces, links, bridge; idempotent
#   .ci/cluster.sh env            # prints `export SLURM_CONF=...` for clients (sbatch, squeue, submitit)
#
# A "host" is a network namespace (`ip netns`, /run/netns/NAME) plus a UTS namespace kept alive
# by a bind-mounted ns file ($STATE/ns/NAME.uts), so it has its own interfaces, addresses and
# hostname; the filesystem (and so munge's socket, the code, the run directories) is shared, as a
# cluster's nodes share a network filesystem. Each host's eth0 is one end of a veth pair whose
# other end (c2p-v<NAME>) sits on the bridge c2p-br0 in the root namespace. Addresses come from a
# private /24 ($C2P_CLUSTER_NET, default 10.213.7) used only here: .1 the bridge (clients in the
# root namespace reach the controller through it), .2 the controller host c2p-ctl, .11+i host
# c2p-h<i>. Nothing is forwarded (ip_forward is left alone), so no host reaches beyond the /24.
#
# slurmctld runs in its own host c2p-ctl (a host that dies never takes the controller with it);
# one slurmd runs in each c2p-h<i>, named by its hostname. No /etc/hosts entries: slurm.conf
# gives every node its NodeAddr, and jobs find each other by those addresses. Names, ports
# ($C2P_CLUSTER_CTLD_PORT 6827, $C2P_CLUSTER_SLURMD_PORT 6828), state ($C2P_CLUSTER_DIR,
# default /tmp/c2p-cluster) and ClusterName are this cluster's own, so it runs beside
# .ci/slurm.sh's single-node cluster. Daemons listen inside the namespaces only.
#
# Failure detection is fast on purpose (SlurmdTimeout=6): the tests kill a host and wait for
# SLURM to notice. munged is shared with .ci/slurm.sh: reused when it answers, else started
# the same way; like .ci/slurm.sh, `down` leaves it running (a system service others use).
set -euo pipefail

STATE="${C2P_CLUSTER_DIR:-/tmp/c2p-cluster}"
CONF="$STATE/slurm.conf"
NET="${C2P_CLUSTER_NET:-10.213.7}"
BRIDGE="c2p-br0"
CTL="c2p-ctl"
CTLD_PORT="${C2P_CLUSTER_CTLD_PORT:-6827}"
SLURMD_PORT="${C2P_CLUSTER_SLURMD_PORT:-6828}"
PARTITION="${C2P_CLUSTER_PARTITION:-hosts}"
MUNGE_SOCKET="/run/munge/munge.socket.2"
# shellcheck source=slurm-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/slurm-common.sh"
HOSTS_FILE="$STATE/hosts"  # one namespace name a line, written before the namespace is made

log() { echo "[c2p cluster] $*" >&2; }

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

host_addr() {  # host_addr NAME -> its address on the bridge
  case "$1" in
    "$CTL") echo "$NET.2" ;;
    c2p-h[1-9]) echo "$NET.$((10 + ${1#c2p-h}))" ;;
    *) log "unknown host $1"; return 1 ;;
  esac
}

veth_of() { echo "c2p-v${1#c2p-}"; }  # root-namespace end of NAME's link (<= 15 chars)

in_host() {  # in_host NAME CMD...: run CMD inside host NAME's network and UTS namespaces
  local name="$1"; shift
  nsenter --net="/run/netns/$name" --uts="$STATE/ns/$name.uts" -- "$@"
}

known_hosts() {  # the namespaces this script made (recorded), plus any left under our names
  { [ -f "$HOSTS_FILE" ] && cat "$HOSTS_FILE"; ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^($CTL|c2p-h[1-9])$"; } | sort -u || true
}

compute_hosts() { known_hosts | grep -E '^c2p-h[1-9]$' || true; }

start_munge() {  # as .ci/slurm.sh does: reuse a munged that answers
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

make_host() {  # make_host NAME: namespaces, link to the bridge, address, hostname
  local name="$1" addr veth
  addr="$(host_addr "$name")"
  veth="$(veth_of "$name")"
  echo "$name" >>"$HOSTS_FILE"
  ip netns add "$name"
  ip link add "$veth" type veth peer name eth0 netns "$name"
  ip link set "$veth" master "$BRIDGE" up
  ip -n "$name" link set lo up
  ip -n "$name" addr add "$addr/24" dev eth0
  ip -n "$name" link set eth0 up
  touch "$STATE/ns/$name.uts"
  unshare --uts="$STATE/ns/$name.uts" hostname "$name"
}

write_conf() {  # write_conf N
  local n="$1" cpus mem_mb i nodes=""
  cpus="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # GNU nproc obeys OMP_NUM_THREADS
  # Every host is this machine: each claims its CPUs and a share of its memory (CR_CPU: memory
  # only bounds --mem requests).
  mem_mb="$(awk -v n="$n" '/MemTotal/ {printf "%d", $2 / 1024 * 0.9 / n}' /proc/meminfo)"
  {
    cat <<EOF
# Written by .ci/cluster.sh: $n hosts in network namespaces, controller on $CTL.
ClusterName=c2pmulti
SlurmctldHost=$CTL($(host_addr "$CTL"))
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# A host that died stays DOWN until someone resumes it (as on a real cluster, a lost node is looked at).
ReturnToService=1
# Notice a dead host within seconds: slurmctld pings every SlurmdTimeout/3.
SlurmdTimeout=6
MessageTimeout=5
EOF
    slurm_common_conf "$MUNGE_SOCKET"
    for i in $(seq "$n"); do
      echo "NodeName=c2p-h$i NodeAddr=$(host_addr "c2p-h$i") CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
      nodes="${nodes:+$nodes,}c2p-h$i"
    done
    echo "PartitionName=$PARTITION Nodes=$nodes Default=YES MaxTime=INFINITE State=UP"
  } >"$CONF.tmp"
  mv "$CONF.tmp" "$CONF"
}

nodes_ready() {  # every compute host idle/mixed/allocated and responding (a "*" suffix: not responding)
  local want have
  want="$(compute_hosts | wc -l)"
  [ "$want" -gt 0 ] || return 1
  have="$(SLURM_CONF="$CONF" sinfo -h -N -o '%N %T' 2>/dev/null | awk '$2 ~ /^(idle|mixed|allocated|completing)$/' | sort -u | wc -l)"
  [ "$have" -eq "$want" ]
}

daemons_alive() {
  local h
  pid_alive "$STATE/slurmctld.pid" || return 1
  for h in $(compute_hosts); do pid_alive "$STATE/slurmd-$h.pid" || return 1; done
}

cmd_up() {
  local n="${1:-2}" i h
  [ "$(id -u)" -eq 0 ] || { log "must run as root (namespaces, munged, slurmd)"; exit 1; }
  [[ "$n" =~ ^[1-8]$ ]] || { log "up N: expected a host count from 1 to 8, got '$n'"; exit 2; }
  if [ -f "$CONF" ] && [ "$(compute_hosts | wc -l)" -eq "$n" ] && daemons_alive && nodes_ready; then
    log "already up with $n host(s) ($CONF)"
    echo "export SLURM_CONF=$CONF"
    return 0
  fi
  cmd_down >/dev/null 2>&1 || true  # a half-up or differently sized cluster: start clean
  trap 'log "up failed; removing what was made"; cmd_down >&2 || true' ERR
  start_munge
  mkdir -p "$STATE/ns" "$STATE/ctld" "$STATE/log" "$STATE/spool"
  : >"$HOSTS_FILE"
  echo "$BRIDGE" >"$STATE/bridge"
  ip link add "$BRIDGE" type bridge
  ip addr add "$NET.1/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  make_host "$CTL"
  for i in $(seq "$n"); do make_host "c2p-h$i"; done
  write_conf "$n"
  log "starting slurmctld on $CTL ($(host_addr "$CTL"):$CTLD_PORT) and slurmd on c2p-h1..c2p-h$n (state in $STATE)"
  in_host "$CTL" /usr/sbin/slurmctld -c -f "$CONF"
  for h in $(compute_hosts); do
    mkdir -p "$STATE/spool/$h"
    in_host "$h" /usr/sbin/slurmd -f "$CONF"
  done
  for _ in $(seq 150); do
    if nodes_ready; then
      trap - ERR
      log "up: partition $PARTITION, $n host(s): $(for h in $(compute_hosts); do printf '%s=%s ' "$h" "$(host_addr "$h")"; done)"
      echo "export SLURM_CONF=$CONF"
      return 0
    fi
    sleep 0.2
  done
  log "hosts did not become idle; logs: $STATE/log/"
  tail -n 20 "$STATE"/log/*.log >&2 || true
  SLURM_CONF="$CONF" sinfo -N >&2 || true
  false
}

stop_pidfile() {  # stop_pidfile FILE NAME: TERM, then KILL after 10 s
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

kill_namespace_processes() {  # every process still in host NAME's network namespace: they are ours
  local name="$1" pids
  [ -e "/run/netns/$name" ] || return 0
  for _ in $(seq 50); do
    pids="$(ip netns pids "$name" 2>/dev/null || true)"
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.1
  done
  log "processes still in $name after SIGKILL: $(ip netns pids "$name" | tr '\n' ' ')"
  return 1
}

cmd_kill_host() {  # the host dies: no process of it survives, its link goes dark
  local name="${1:-}"
  compute_hosts | grep -qx "$name" || { log "kill-host: expected one of: $(compute_hosts | tr '\n' ' '), got '$name'"; exit 2; }
  ip link set "$(veth_of "$name")" down 2>/dev/null || true
  ip -n "$name" link set eth0 down 2>/dev/null || true
  kill_namespace_processes "$name"
  rm -f "$STATE/slurmd-$name.pid"
  log "host $name is dead"
}

cmd_down() {
  local h ok=0
  if [ -f "$STATE/slurmctld.pid" ]; then
    for h in $(compute_hosts); do stop_pidfile "$STATE/slurmd-$h.pid" "slurmd on $h"; done
    stop_pidfile "$STATE/slurmctld.pid" "slurmctld on $CTL"
  fi
  for h in $(known_hosts); do
    kill_namespace_processes "$h" || ok=1
    ip link del "$(veth_of "$h")" 2>/dev/null || true
    ip netns del "$h" 2>/dev/null || true
    if [ -e "$STATE/ns/$h.uts" ]; then
      umount "$STATE/ns/$h.uts" 2>/dev/null || true
      rm -f "$STATE/ns/$h.uts"
    fi
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -f "$HOSTS_FILE" "$STATE/bridge" "$STATE"/slurmd-*.pid
  # What is left must be nothing: say so loudly if it is not.
  if ip netns list 2>/dev/null | grep -qE "^($CTL|c2p-h[1-9])( |$)" || ip -o link show 2>/dev/null | grep -qE ": (c2p-v|$BRIDGE)"; then
    log "down: namespaces or links remain: $(ip netns list | tr '\n' ' ') $(ip -o link show | grep -oE 'c2p-[a-z0-9]+' | tr '\n' ' ')"
    ok=1
  fi
  return "$ok"
}

cmd_status() {
  if [ -f "$CONF" ] && daemons_alive && nodes_ready; then
    echo "running: SLURM_CONF=$CONF"
    SLURM_CONF="$CONF" sinfo -N
    return 0
  fi
  echo "not running"
  return 1
}

case "${1:-}" in
  up) cmd_up "${2:-2}" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kill-host) cmd_kill_host "${2:-}" ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 up N|down|status|kill-host NAME|env" >&2; exit 2 ;;
esac
