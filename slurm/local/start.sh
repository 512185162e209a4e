#!/usr/bin/env bash
# Start the single-node SLURM test cluster: munged, MariaDB, slurmdbd, slurmctld, slurmd (in that order),
# each in the background with a PID file, then check that a job runs. Idempotent: daemons already running
# (by their PID files) are left alone, so a second call returns at once.
# Partitions: `debug` (default, low priority, preemptible by requeue) and `urgent` (high priority).
# Environment: SLURM_LOCAL_DIR (state, spool, logs, PID files; default /tmp/slurm-ci),
#              SLURM_LOCAL_CPUS (job slots the node advertises; default max(nproc, 4)).
# Stop with slurm/local/stop.sh. Needs root: run slurm/local/setup.sh first.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
D="${SLURM_LOCAL_DIR:-/tmp/slurm-ci}"
HOST="$(hostname -s)"
NPROC="$(nproc)"
CPUS="${SLURM_LOCAL_CPUS:-$(( NPROC > 4 ? NPROC : 4 ))}"
MUNGE_PID=/run/munge/munged.pid
MYSQL_PID=/run/mysqld/mysqld.pid
MYSQL_SOCK=/run/mysqld/mysqld.sock

say() { echo "slurm/local/start.sh: $*"; }
die() { echo "slurm/local/start.sh: $*" >&2; exit 1; }
# alive PIDFILE NAME: the PID file names a live process with that command name (guards against reused PIDs).
alive() { [ -f "$1" ] && [ "$(ps -o comm= -p "$(cat "$1")" 2>/dev/null)" = "$2" ]; }
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local n=$(( $1 * 4 )) what=$2; shift 2
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  die "timed out waiting for $what (logs in $D/log)"
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
render() {  # render TEMPLATE OUT MODE
  sed -e "s|@HOST@|$HOST|g" -e "s|@DIR@|$D|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$MEM|g" "$1" > "$2.tmp"
  chmod "$3" "$2.tmp"; mv "$2.tmp" "$2"
}

[ "$(id -u)" = 0 ] || die "must run as root (the daemons run as root/munge/mysql)"
command -v slurmctld >/dev/null || die "SLURM is not installed; run slurm/local/setup.sh first"
mkdir -p "$D"/{state,spool,log} /etc/slurm
started=0

# The node name must equal `hostname -s` and resolve without DNS.
getent hosts "$HOST" >/dev/null || echo "127.0.0.1 $HOST" >> /etc/hosts

# 1. munge (authentication between all SLURM daemons and clients)
if ! alive "$MUNGE_PID" munged; then
  if [ ! -s /etc/munge/munge.key ]; then  # munge's postinst normally creates it
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  install -d -o munge -g munge -m 755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  started=1
fi
wait_for 10 munge sh -c 'munge -n | unmunge'

# 2. MariaDB + slurmdbd (accounting: sacct, which submitit polls for job states)
if ! alive "$MYSQL_PID" mariadbd; then
  [ -d /var/lib/mysql/mysql ] ||
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >"$D/log/mariadb-install.log" 2>&1
  install -d -o mysql -g mysql -m 755 /run/mysqld
  # MariaDB runs as `mysql` and cannot open a log in a root-owned directory: redirect its stderr instead.
  setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --pid-file="$MYSQL_PID" \
    --socket="$MYSQL_SOCK" --skip-networking </dev/null >"$D/log/mariadb.log" 2>&1 &
  started=1
fi
wait_for 30 "MariaDB socket" test -S "$MYSQL_SOCK"
wait_for 30 MariaDB mariadb -u root -e "SELECT 1"
mariadb -u root -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmpw';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"

# RealMemory ~90 % of what slurmd detects: memory is not consumable (CR_CPU), but --mem requests must fit.
MEM=$(slurmd -C | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -1)
MEM=$(( ${MEM:-2000} * 9 / 10 ))
render "$HERE/templates/slurmdbd.conf.in" /etc/slurm/slurmdbd.conf 600
render "$HERE/templates/slurm.conf.in" /etc/slurm/slurm.conf 644

if ! alive "$D/slurmdbd.pid" slurmdbd; then
  slurmdbd
  started=1
fi
wait_for 30 slurmdbd port_open 6819

# 3. controller and node daemon (state is kept in $D/state, so job ids keep increasing across restarts)
if ! alive "$D/slurmctld.pid" slurmctld; then
  slurmctld
  started=1
fi
wait_for 30 slurmctld scontrol ping
if ! alive "$D/slurmd.pid" slurmd; then
  slurmd
  started=1
fi
node_up() { sinfo -h -n "$HOST" -o %T | grep -Eqx 'idle|mixed|allocated|completing'; }
if ! wait_for 5 "node" node_up 2>/dev/null; then :; fi
if ! node_up; then
  # A node left DOWN/DRAINED by an earlier unclean stop: return it to service.
  scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true
  wait_for 30 "node $HOST to be idle (sinfo: $(sinfo -h -o '%T %E' 2>&1))" node_up
fi

if [ "$started" = 1 ]; then
  JID=$(sbatch --parsable -p debug -o "$D/log/hello-%j.out" --wrap 'hostname')
  job_done() { scontrol show job "$JID" | grep -q 'JobState=COMPLETED'; }
  wait_for 60 "hello job $JID" job_done
  say "SLURM is up on $HOST ($CPUS slots; partitions debug, urgent; accounting via slurmdbd); hello job $JID COMPLETED"
else
  say "SLURM already running on $HOST"
fi
