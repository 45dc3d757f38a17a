#!/usr/bin/env bash
# `make demo`: the whole live chain on this machine under honcho (Procfile). Ctrl-C stops it all.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=$repo/.venv/bin:$PATH PYTHONUNBUFFERED=1
port_base=${QUAX_WEB_PORT_BASE:-6066}
# The DAQ emulator makes 16 MB/s of slices, 58 GB an hour: the demo keeps them 10 minutes, not the
# 7 days a detector's broker does (spectra and candidates are kept forever either way; docs/usage.md).
export QUAX_SLICES_RETENTION_S=${QUAX_SLICES_RETENTION_S:-600}
# This demo's campaign: its runs are QUAX_DEMO_RUN-s000, -s001, ... (ops/demo/produce.sh); the live
# campaign leaves out the runs of earlier demos, which the broker under var/ still holds.
export QUAX_DEMO_RUN=${QUAX_DEMO_RUN:-demo-$(date -u +%Y%m%d-%H%M%S)}
export QUAX_CAMPAIGN_RUNS=${QUAX_CAMPAIGN_RUNS:-$QUAX_DEMO_RUN-s*}
cat <<MSG
quax-stream demo — broker 127.0.0.1:${KAFKA_PORT:-9092}, four Faust workers, DAQ emulator at real-time pace
  (a fresh synthetic file every 4.2 s; slices kept ${QUAX_SLICES_RETENTION_S} s), stepping the cavity like a
  haloscope campaign: a new run every ${QUAX_DEMO_FILES_PER_STEP:-36} files, its LO 50 kHz up, an axion injected at
  ${QUAX_DEMO_AXION-10400400000:400} (FREQ_HZ:(g/g_KSVZ)^2; it passes the threshold after about 4 runs).
  dashboard:     http://127.0.0.1:${QUAX_DASHBOARD_PORT:-5006}/dashboard   (panels: docs/dashboard.md)
  campaign:      http://127.0.0.1:${QUAX_DASHBOARD_PORT:-5006}/dashboard?page=campaign   (grand spectrum, rescan list, limit)
                 http://127.0.0.1:${QUAX_CAMPAIGN_PORT:-6060}/campaign/   (quax campaign-live: docs/analysis.md;
                 the runs $QUAX_CAMPAIGN_RUNS)
  worker views:  http://127.0.0.1:$port_base/quax/runs/   (any worker: $port_base..$((port_base + 3)))
                 http://127.0.0.1:$port_base/quax/runs/<run>/files/latest/
  metrics:       http://127.0.0.1:$port_base/metrics  (producer: http://127.0.0.1:${QUAX_PRODUCER_METRICS_PORT:-9464}/metrics)
  prometheus:    http://127.0.0.1:${QUAX_PROMETHEUS_PORT:-9090}/   (rules and Grafana dashboard: docs/metrics.md)
  alerts:        http://127.0.0.1:${ALERTMANAGER_PORT:-9095}/   (Alertmanager: routes and receivers in docs/deploy.md)
  export a run:  .venv/bin/quax export --run <run> --out run.npz
  check it all:  .venv/bin/quax doctor   (each check ok / warn / fail with its fix: docs/troubleshooting.md)
Ctrl-C stops everything.
MSG
# honcho gives processes 5 s after SIGTERM; Faust workers need longer to flush their tables.
exec python - <<'PY'
import sys
import honcho.manager
from honcho.command import main

honcho.manager.KILL_WAIT = 30
sys.argv = ["honcho", "start", "-f", "Procfile"]
main()
PY
