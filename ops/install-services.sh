#!/usr/bin/env bash
# Install the systemd units of quax-stream (ops/systemd/*.in) for the quax installed in PREFIX.
#
#   ops/install-services.sh --prefix DIR [--user NAME] [--dest DIR] [--conf FILE] [--daq-root DIR]
#
#   --prefix DIR     where quax is installed: DIR/bin/quax and DIR/bin/bokeh (a venv, e.g. /opt/quax)
#   --user NAME      the services' dedicated user and group (quax); not created here
#   --dest DIR       where the units go (/etc/systemd/system); any directory will do, no root needed
#   --conf FILE      the settings file the units read and check (/etc/quax/quax.env)
#   --daq-root DIR   quax-producer@RUN follows DIR/RUN (/data/quax)
#
# Writes quax-broker.service, quax-worker@.service, quax-producer@.service, quax-dashboard.service,
# quax-prometheus.service, quax-alertmanager.service and quax.target into DEST, prints them and the
# commands that remain (user, settings file, systemctl). State lives in /var/lib/quax
# (StateDirectory=quax), logs in the journal. docs/deploy.md, "Services at boot (systemd)", walks
# through a fresh host.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
templates=$here/systemd
prefix="" user=quax dest=/etc/systemd/system conf=/etc/quax/quax.env daq_root=/data/quax

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "$0"; }  # this header
die() { echo "install-services.sh: $*" >&2; exit 1; }

while (($#)); do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --user) user=${2:?--user needs a name}; shift 2 ;;
    --dest) dest=${2:?--dest needs a directory}; shift 2 ;;
    --conf) conf=${2:?--conf needs a file}; shift 2 ;;
    --daq-root) daq_root=${2:?--daq-root needs a directory}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install-services.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n $prefix ]] || { echo "install-services.sh: --prefix is required" >&2; usage >&2; exit 2; }
prefix=$(cd "$prefix" 2>/dev/null && pwd) || die "--prefix: no directory $prefix"
for path in "$prefix" "$conf" "$daq_root"; do
  [[ $path == /* ]] || die "$path: systemd needs an absolute path"
  [[ $path != *[[:space:]#%\$]* ]] || die "$path: a path with spaces, #, %, \\ or \$ would need quoting in the units"
done
[[ $user =~ ^[a-z_][a-z0-9_-]*$ ]] || die "--user $user: not a valid user name"
for tool in quax bokeh; do
  [[ -x $prefix/bin/$tool ]] || die "$prefix/bin/$tool is missing: install quax-stream there first (pip install ...)"
done
# The interpreter of the installed quax (its #! line) finds the shipped ops files and the dashboard.
python=$(head -n1 "$prefix/bin/quax" | sed -n 's/^#! *//p' | cut -d' ' -f1)
[[ -x $python ]] || die "$prefix/bin/quax: its interpreter ${python:-(none)} is not executable"
read -r ops dashboard < <("$python" -c '
import os, dashboard
from quax_faust.ops_files import ops_dir
print(ops_dir(), os.path.dirname(dashboard.__file__))') || die "$python cannot import quax_faust and dashboard"
[[ -f $ops/kafka/broker.sh ]] || die "$ops/kafka/broker.sh is missing"

mkdir -p "$dest"
installed=()
for template in "$templates"/*.in; do
  unit=$(basename "$template" .in)
  sed -e "s#@PREFIX@#$prefix#g" -e "s#@PYTHON@#$python#g" -e "s#@USER@#$user#g" -e "s#@CONF@#$conf#g" \
      -e "s#@DAQ_ROOT@#$daq_root#g" -e "s#@OPS@#$ops#g" -e "s#@DASHBOARD@#$dashboard#g" \
      "$template" > "$dest/$unit.tmp"
  if grep -n '@[A-Z_]*@' "$dest/$unit.tmp" >&2; then rm -f "$dest/$unit.tmp"; die "$template: a placeholder is left"; fi
  chmod 644 "$dest/$unit.tmp"
  mv "$dest/$unit.tmp" "$dest/$unit"
  installed+=("$unit")
done

echo "installed into $dest (quax in $prefix, user $user, settings $conf, DAQ runs in $daq_root/RUN):"
printf '  %s\n' "${installed[@]}"
echo
echo "next, as root:"
if ! getent passwd "$user" >/dev/null; then
  echo "  useradd --system --user-group --home-dir /var/lib/quax --shell /usr/sbin/nologin $user"
fi
if [[ ! -f $conf ]]; then
  echo "  install -D -m 640 -o root -g $user $templates/quax.env.example $conf   # then edit it"
fi
echo "  $prefix/bin/quax settings --check $conf"
if [[ $dest == /etc/systemd/system ]]; then
  echo "  systemctl daemon-reload"
else
  echo "  # $dest is not /etc/systemd/system: copy or link the units there, then"
  echo "  systemctl daemon-reload"
fi
echo "  systemctl enable --now quax.target quax-broker.service quax-worker@{0..3}.service quax-dashboard.service quax-prometheus.service quax-alertmanager.service"
echo "  systemctl enable --now quax-producer@RUN.service      # when run RUN starts writing $daq_root/RUN"
echo "  journalctl -u 'quax-*' -f"
