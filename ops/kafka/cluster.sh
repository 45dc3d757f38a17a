#!/usr/bin/env bash
# A 3-node Apache Kafka KRaft cluster on loopback (each node broker + controller), for the
# scale-out and broker-failure drills (docs/deploy.md).
#
#   ops/kafka/cluster.sh start [BASE_PORT]   nodes on BASE, BASE+2, BASE+4 (controllers on +1)
#   ops/kafka/cluster.sh stop  [BASE_PORT]
#   ops/kafka/cluster.sh bootstrap [BASE_PORT]   prints the bootstrap list for QUAX_BROKER
#
# Replication factor 3 and min.insync.replicas 2 for every topic: one node may die without loss.
# Data under QUAX_VAR/kafka-cluster-BASE/node-K. KAFKA_NODES (3) sets the size.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmd=${1:-start}
base=${2:-19192}
nodes=${KAFKA_NODES:-3}
var=${QUAX_VAR:-$repo/var}
dir=$var/kafka-cluster-$base
port_of() { echo $((base + 2 * ($1 - 1))); }

voters=""
for k in $(seq 1 "$nodes"); do voters+="${voters:+,}$k@127.0.0.1:$(($(port_of "$k") + 1))"; done

case $cmd in
  start)
    mkdir -p "$dir"
    "$here/broker.sh" install
    [[ -f $dir/cluster.id ]] || java -cp "$var/kafka-lib/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1 > "$dir/cluster.id"
    for k in $(seq 1 "$nodes"); do
      KAFKA_NODE_ID=$k KAFKA_VOTERS=$voters KAFKA_CLUSTER_ID=$(cat "$dir/cluster.id") \
        KAFKA_REPLICATION=$(( nodes < 3 ? nodes : 3 )) KAFKA_MIN_ISR=$(( nodes < 3 ? 1 : 2 )) \
        KAFKA_DATA_DIR=$dir/node-$k KAFKA_HEAP=${KAFKA_HEAP:--Xmx512m -Xms128m} \
        "$here/broker.sh" spawn "$(port_of "$k")"
    done
    for k in $(seq 1 "$nodes"); do KAFKA_DATA_DIR=$dir/node-$k "$here/broker.sh" wait "$(port_of "$k")"; done
    echo "cluster up: QUAX_BROKER=$("$0" bootstrap "$base")"
    ;;
  stop)
    # All at once: one by one, each waits for the controlled shutdown of the last (~10 s each).
    for k in $(seq 1 "$nodes"); do (KAFKA_DATA_DIR=$dir/node-$k "$here/broker.sh" stop "$(port_of "$k")" || true) & done
    wait
    ;;
  bootstrap)
    out=""
    for k in $(seq 1 "$nodes"); do out+="${out:+,}127.0.0.1:$(port_of "$k")"; done
    echo "$out"
    ;;
  *) echo "usage: $0 start|stop|bootstrap [BASE_PORT]" >&2; exit 2 ;;
esac
