#!/usr/bin/env bash
# Alertmanager for quax-stream in the foreground (Procfile, quax-alertmanager.service): Debian's
# prometheus-alertmanager on ${ALERTMANAGER_HOST:-127.0.0.1}:${ALERTMANAGER_PORT:-9095}, routing
# what Prometheus (ops/prometheus/run.sh, which sends there) fires; docs/deploy.md, "Alerts routed".
#
# Environment: ALERTMANAGER_HOST (127.0.0.1), ALERTMANAGER_PORT (9095), ALERTMANAGER_CONFIG
# (ops/alertmanager/alertmanager.yml, whose receivers are placeholders: a lab points this at its
# own copy, e.g. /etc/quax/alertmanager.yml), ALERTMANAGER_DATA_DIR (QUAX_VAR_DIR/alertmanager/PORT,
# QUAX_VAR_DIR ./var as in the settings): silences and the notification log, kept 5 days.
# One Alertmanager, no cluster: the gossip port (0.0.0.0:9094 by default) stays closed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
host=${ALERTMANAGER_HOST:-127.0.0.1}
port=${ALERTMANAGER_PORT:-9095}
config=${ALERTMANAGER_CONFIG:-$here/alertmanager.yml}
data=${ALERTMANAGER_DATA_DIR:-${QUAX_VAR_DIR:-$PWD/var}/alertmanager/$port}

log() { echo "[alertmanager] $*" >&2; }

binary=$(command -v prometheus-alertmanager) \
  || { log "no prometheus-alertmanager on PATH: install Debian's package (ops/setup.sh does, as root)"; exit 1; }
[[ -f $config ]] || { log "$config: no such file (ALERTMANAGER_CONFIG)"; exit 1; }
if grep -q '\.invalid/' "$config"; then
  log "$config still sends to the placeholder receivers (*.invalid): no alert leaves this" \
      "machine. Copy it to /etc/quax/alertmanager.yml, put the lab's receivers in, and set" \
      "ALERTMANAGER_CONFIG (docs/deploy.md, \"Alerts routed\")"
fi
mkdir -p "$data"
log "http://$host:$port/ routing with $config; data in $data"
# exec: honcho's and systemd's SIGTERM (and a reload's SIGHUP) reach Alertmanager itself.
exec "$binary" --config.file="$config" --storage.path="$data" --web.listen-address="$host:$port" \
  --cluster.listen-address= --log.level=warn
