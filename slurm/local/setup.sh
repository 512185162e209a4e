#!/usr/bin/env bash
# Install a single-node SLURM test cluster from Debian's packages (munge, slurmctld, slurmd, slurm-client,
# slurmdbd, mariadb-server). Idempotent: returns in well under a second when everything is installed.
# Daemons are NOT started here (policy-rc.d blocks that anyway); run slurm/local/start.sh next.
# Needs root (or passwordless sudo). Why each choice: docs/cluster.md.
set -euo pipefail

need=(munged slurmctld slurmd sinfo sbatch sacct slurmdbd mariadbd)
missing=0
for b in "${need[@]}"; do
  PATH="$PATH:/usr/sbin:/sbin" command -v "$b" >/dev/null 2>&1 || missing=1
done
if [ "$missing" = 0 ]; then
  echo "slurm/local/setup.sh: SLURM, munge and MariaDB already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "slurm/local/setup.sh: needs root or sudo to apt-get install" >&2; exit 1; }
  SUDO="sudo -n"
fi
export DEBIAN_FRONTEND=noninteractive
pkgs=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
# apt-get update only when the package lists cannot resolve what we need (a fresh container has none).
if ! apt-cache show slurmctld >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
# postinst scripts try to start services; in containers without an init this fails harmlessly
# ("policy-rc.d denied execution of start") and start.sh starts every daemon itself.
apt_install() { $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null; }
# Stale package lists (a mirror moved on) make the install 404: refresh them once and retry.
apt_install || { $SUDO apt-get update -qq && apt_install; }
echo "slurm/local/setup.sh: installed ${pkgs[*]}"
