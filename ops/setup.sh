#!/usr/bin/env bash
# Install everything quax-stream needs on a fresh Debian machine; idempotent and quick when done.
#   - Debian packages: prometheus (metrics), prometheus-alertmanager (alerts routed), chromium
#     (browser tests) — only when run as root
#   - Python venv .venv with the project (editable) and the extras of the demo, the tests and the
#     benchmarks (pinned in pyproject.toml); reinstalled whenever pyproject.toml changes
#   - Apache Kafka jars from Maven Central (ops/kafka/pom.xml) into var/kafka-lib
#   - Spark's Kafka source jars from Maven Central (ops/spark/pom.xml) into var/spark-jars
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3

need_apt=()
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need_apt+=(prometheus-alertmanager)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
if ((${#need_apt[@]})); then
  if [[ $(id -u) == 0 ]]; then
    echo "[setup] apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts its own Prometheus (:9090) and Alertmanager (:9093) on a host running systemd:
    # the ones just installed here would take the demo's ports, so they are stopped and disabled.
    if [[ -d /run/systemd/system ]]; then
      for unit in prometheus prometheus-alertmanager; do
        if [[ " ${need_apt[*]} " == *" $unit "* ]]; then
          if systemctl disable --now "$unit.service" >/dev/null 2>&1; then
            echo "[setup] disabled Debian's $unit.service (ours: docs/deploy.md)"
          fi
        fi
      done
    fi
  else
    echo "[setup] missing Debian packages (install as root): ${need_apt[*]}" >&2
  fi
fi

stamp=.venv/.installed-$(cat pyproject.toml | sha256sum | cut -c1-16)
if [[ ! -f $stamp ]]; then
  echo "[setup] Python venv .venv"
  [[ -x .venv/bin/python ]] || "$python" -m venv .venv
  # setuptools as build-system.requires says: tests/test_packaging.py builds the wheel offline with it
  .venv/bin/pip install -q --upgrade pip wheel "setuptools>=70.1"
  .venv/bin/pip install -q -e ".[demo,test,bench]"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

ops/kafka/broker.sh install
ops/spark/install.sh
echo "[setup] ready"
