#!/usr/bin/env bash
# Stop the local test cluster started by slurm/local/start.sh: cancel remaining jobs, then stop each daemon
# by the PID in its PID file (never by name), in reverse start order: TERM, wait up to 15 s, then KILL.
# Add --purge-state to also delete the cluster's state, spool and logs (job ids then restart at 1).
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
D="${SLURM_LOCAL_DIR:-/tmp/slurm-ci}"

if command -v scancel >/dev/null && [ -f "$D/slurmctld.pid" ]; then
  scancel --user="$(id -un)" 2>/dev/null
  for _ in $(seq 1 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
fi
stop() {  # stop PIDFILE NAME
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if [ "$(ps -o comm= -p "$pid" 2>/dev/null)" = "$2" ]; then  # a stale PID file must not kill another process
    kill -TERM "$pid"
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$1"
  echo "slurm/local/stop.sh: stopped $2"
}
stop "$D/slurmd.pid"        slurmd
stop "$D/slurmctld.pid"     slurmctld
stop "$D/slurmdbd.pid"      slurmdbd
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid  munged
if [ "${1:-}" = "--purge-state" ]; then
  rm -rf "$D"
  echo "slurm/local/stop.sh: removed $D"
fi
exit 0
