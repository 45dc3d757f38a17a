#!/usr/bin/env bash
# A Spark standalone cluster on loopback from the pyspark distribution (its spark-class): one Master
# and two Workers of 1 core / 1 GiB each, for running `quax verify` / `quax reprocess` with
# --spark-master spark://127.0.0.1:PORT (docs/spark.md, "A local Spark cluster").
#
#   ops/spark/cluster.sh start  [PORT]   master RPC on PORT, its web UI (and /json/) on PORT+1;
#                                         worker K (1, 2) RPC on PORT+2K, web UI on PORT+2K+1
#   ops/spark/cluster.sh stop   [PORT]   each daemon's process group (the worker's executors too)
#   ops/spark/cluster.sh status [PORT]   the master's and each worker's state, from the master's JSON
#   ops/spark/cluster.sh master [PORT]   prints the master URL for --spark-master / QUAX_SPARK_MASTER
#
# Environment: SPARK_WORKERS (2), SPARK_WORKER_CORES (1), SPARK_WORKER_MEMORY (1g), SPARK_HOME (the
# pyspark package of PYTHON, default the checkout's .venv/bin/python), QUAX_VAR (var/ in the repo).
# Logs, pid files and the workers' work dirs (executor logs) under QUAX_VAR/spark-cluster-PORT.
# Each daemon runs in its own session (setsid): its pid is its process group, which holds the
# executors a worker starts, so stop leaves no JVM behind even for a worker killed with SIGKILL.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmd=${1:-status}
port=${2:-17077}
host=127.0.0.1
ui=$((port + 1))
workers=${SPARK_WORKERS:-2}
var=${QUAX_VAR:-$repo/var}
dir=$var/spark-cluster-$port
python=${PYTHON:-$repo/.venv/bin/python}
[[ -x $python ]] || python=python3
spark_home=${SPARK_HOME:-$("$python" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')}
export SPARK_HOME=$spark_home SPARK_LOCAL_IP=$host
# The daemons' own heap (the Worker's is not the executors' memory: that is --memory).
export SPARK_DAEMON_MEMORY=${SPARK_DAEMON_MEMORY:-256m}

log() { echo "[spark:$port] $*" >&2; }

json() { curl -sf --max-time 2 "http://$host:$ui/json/" || true; }
alive_workers() { json | tr -d ' \n' | grep -o '"aliveworkers":[0-9]*' | cut -d: -f2 | grep . || echo 0; }

running_pid() {  # running_pid NAME: the pid of a daemon of ours that is still alive
  local pidfile=$dir/$1.pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

spawn() {  # spawn NAME CLASS ARGS...: a daemon in its own session, in the background
  local name=$1; shift
  if pid=$(running_pid "$name"); then log "$name already running (pid $pid)"; return 0; fi
  setsid nohup "$spark_home/bin/spark-class" "$@" >"$dir/$name.log" 2>&1 </dev/null &
  echo $! > "$dir/$name.pid"
}

wait_for() {  # wait_for WHAT SECONDS TEST...
  local what=$1 seconds=$2; shift 2
  for _ in $(seq 1 $((seconds * 5))); do "$@" && return 0; sleep 0.2; done
  log "$what not seen after $seconds s; see $dir/*.log"; return 1
}

case $cmd in
  start)
    mkdir -p "$dir"
    spawn master org.apache.spark.deploy.master.Master --host $host --port "$port" --webui-port "$ui"
    wait_for "the master's web UI on $host:$ui" 60 bash -c "curl -sf --max-time 2 http://$host:$ui/json/ >/dev/null"
    for k in $(seq 1 "$workers"); do
      mkdir -p "$dir/worker-$k"
      spawn "worker-$k" org.apache.spark.deploy.worker.Worker "spark://$host:$port" \
        --host $host --port $((port + 2 * k)) --webui-port $((port + 2 * k + 1)) \
        --cores "${SPARK_WORKER_CORES:-1}" --memory "${SPARK_WORKER_MEMORY:-1g}" --work-dir "$dir/worker-$k"
    done
    registered() { [[ $(alive_workers) -ge $workers ]]; }
    wait_for "$workers ALIVE workers at the master" 90 registered
    log "cluster up: QUAX_SPARK_MASTER=spark://$host:$port, status at http://$host:$ui/json/"
    ;;
  stop)
    names=(master); for k in $(seq 1 "$workers"); do names+=("worker-$k"); done
    for name in "${names[@]}"; do
      [[ -f $dir/$name.pid ]] || continue
      # the group, not just the pid: a worker's executors, even after the worker itself died
      kill -TERM -- "-$(cat "$dir/$name.pid")" 2>/dev/null || true
    done
    for name in "${names[@]}"; do
      [[ -f $dir/$name.pid ]] || continue
      pgid=$(cat "$dir/$name.pid")
      for _ in $(seq 1 100); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 -- "-$pgid" 2>/dev/null; then log "$name did not stop in 10 s; killing"; kill -KILL -- "-$pgid" 2>/dev/null || true; fi
      rm -f "$dir/$name.pid"
    done
    log "stopped"
    ;;
  status)
    if ! pid=$(running_pid master); then log "master not running"; exit 1; fi
    log "master running (pid $pid), $(alive_workers) of $workers workers ALIVE"
    [[ $(alive_workers) -ge $workers ]]
    ;;
  master) echo "spark://$host:$port" ;;
  *) echo "usage: $0 start|stop|status|master [PORT]" >&2; exit 2 ;;
esac
