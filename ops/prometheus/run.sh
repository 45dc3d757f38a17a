#!/usr/bin/env bash
# Prometheus for quax-stream in the foreground (Procfile, `make demo`): Debian's `prometheus` on
# 127.0.0.1:${QUAX_PROMETHEUS_PORT:-9090}, scraping the four workers and the producer at the ports
# of the QUAX_* settings, with ops/prometheus/rules.yml; data under var/prometheus/<port>/. Alerts go to
# the Alertmanager at ${ALERTMANAGER_HOST:-127.0.0.1}:${ALERTMANAGER_PORT:-9095} (ops/alertmanager/run.sh;
# port 0: none are sent).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
exec "$repo/.venv/bin/python" -m quax_faust.tools.prometheus run
