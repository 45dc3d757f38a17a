#!/usr/bin/env bash
# Apache Kafka (KRaft, single node) for quax-stream: install, start, run, stop, status.
#
#   ops/kafka/broker.sh install              fetch the pinned jars from Maven Central (pom.xml)
#   ops/kafka/broker.sh start [PORT]         format storage if new, start in the background, wait
#   ops/kafka/broker.sh run   [PORT]         the same in the foreground (for honcho / Procfile)
#   ops/kafka/broker.sh spawn [PORT]         start in the background without waiting (cluster.sh)
#   ops/kafka/broker.sh stop  [PORT]         SIGTERM, wait for a clean shutdown
#   ops/kafka/broker.sh status [PORT]
#
# Environment: KAFKA_HOST (127.0.0.1), KAFKA_PORT (9092; the controller listens on PORT+1),
# QUAX_VAR (var/ in the repo), KAFKA_DATA_DIR (QUAX_VAR/kafka/PORT), KAFKA_HEAP (-Xmx1g -Xms256m),
# KAFKA_RETENTION_HOURS (168), KAFKA_RETENTION_BYTES (536870912000 per partition).
# Security (docs/deploy.md): KAFKA_TLS=1 serves TLS with a self-signed certificate made at first start
# (CA for clients: DATA_DIR/tls/ca.pem); KAFKA_SASL_USERS="user:password[,user:password]" requires
# SASL/SCRAM-SHA-256 logins (users created when the storage is formatted; the first one is also used
# between broker and itself). Both together give SASL_SSL. The controller listener stays plaintext
# on the loopback interface.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cmd=${1:-status}
port=${2:-${KAFKA_PORT:-9092}}
host=${KAFKA_HOST:-127.0.0.1}
controller_port=$((port + 1))
var=${QUAX_VAR:-$repo/var}
lib=${KAFKA_LIB:-$var/kafka-lib}
data=${KAFKA_DATA_DIR:-$var/kafka/$port}
pidfile=$data.pid
heap=${KAFKA_HEAP:--Xmx1g -Xms256m}

log() { echo "[broker:$port] $*" >&2; }

install() {
  local stamp="$lib/.pom.sha256" want
  want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then return 0; fi
  log "fetching Apache Kafka jars from Maven Central into $lib"
  rm -rf "$lib"; mkdir -p "$lib"
  mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory="$lib"
  echo "$want" > "$stamp"
}

java_run() {  # java_run MAIN ARGS...: the JVM with Kafka's classpath and our logging
  local main=$1; shift
  # shellcheck disable=SC2086
  exec java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$data" \
    -cp "$lib/*" "$main" "$@"
}

configure() {
  install
  mkdir -p "$data/log"
  sed -e "s#@HOST@#$host#g" -e "s#@PORT@#$port#g" -e "s#@CONTROLLER_PORT@#$controller_port#g" \
      -e "s#@DATA_DIR@#$data/log#g" -e "s#@NODE_ID@#${KAFKA_NODE_ID:-1}#g" \
      -e "s#@VOTERS@#${KAFKA_VOTERS:-${KAFKA_NODE_ID:-1}@$host:$controller_port}#g" \
      -e "s#@REPLICATION@#${KAFKA_REPLICATION:-1}#g" -e "s#@MIN_ISR@#${KAFKA_MIN_ISR:-1}#g" \
      -e "s#@RETENTION_HOURS@#${KAFKA_RETENTION_HOURS:-168}#g" \
      -e "s#@RETENTION_BYTES@#${KAFKA_RETENTION_BYTES:-536870912000}#g" \
      "$here/server.properties.in" > "$data/server.properties"
  security >> "$data/server.properties"
  if [[ -n ${KAFKA_EXTRA_PROPERTIES:-} ]]; then cat "$KAFKA_EXTRA_PROPERTIES" >> "$data/server.properties"; fi
  if [[ ! -f $data/log/meta.properties ]]; then
    local cluster_id scram=()
    cluster_id=${KAFKA_CLUSTER_ID:-$(java_run kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)}
    log "formatting new storage in $data/log (cluster $cluster_id)"
    local IFS=,
    for entry in ${KAFKA_SASL_USERS:-}; do
      scram+=(--add-scram "SCRAM-SHA-256=[name=${entry%%:*},password=${entry#*:}]")
    done
    unset IFS
    (java_run kafka.tools.StorageTool format -t "$cluster_id" -c "$data/server.properties" "${scram[@]}" >/dev/null)
  fi
}

# Listener security from KAFKA_TLS / KAFKA_SASL_USERS (printed as properties overriding the template).
security() {
  local tls=${KAFKA_TLS:-0} users=${KAFKA_SASL_USERS:-} protocol=PLAINTEXT
  [[ -z $users && $tls != 1 ]] && return 0
  if [[ -n $users && $tls == 1 ]]; then protocol=SASL_SSL; elif [[ -n $users ]]; then protocol=SASL_PLAINTEXT; else protocol=SSL; fi
  echo "# --- security (broker.sh: KAFKA_TLS=$tls, SASL users: ${users:+yes}) ---"
  echo "listeners=$protocol://$host:$port,CONTROLLER://$host:$controller_port"
  echo "advertised.listeners=$protocol://$host:$port"
  echo "listener.security.protocol.map=CONTROLLER:PLAINTEXT,$protocol:$protocol"
  echo "inter.broker.listener.name=$protocol"
  if [[ $tls == 1 ]]; then
    local dir=$data/tls pass=${KAFKA_TLS_STORE_PASSWORD:-quax-store}
    if [[ ! -f $dir/broker.p12 ]]; then
      mkdir -p "$dir"
      keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 -storetype PKCS12 \
        -keystore "$dir/broker.p12" -storepass "$pass" -keypass "$pass" -dname "CN=$host" \
        -ext "SAN=ip:$host,dns:localhost" >/dev/null 2>&1
      keytool -exportcert -rfc -alias broker -keystore "$dir/broker.p12" -storepass "$pass" \
        -file "$dir/ca.pem" >/dev/null 2>&1
      log "made a self-signed TLS certificate; clients trust $dir/ca.pem"
    fi
    echo "ssl.keystore.type=PKCS12"
    echo "ssl.keystore.location=$dir/broker.p12"
    echo "ssl.keystore.password=$pass"
    echo "ssl.key.password=$pass"
    echo "ssl.truststore.type=PEM"
    echo "ssl.truststore.location=$dir/ca.pem"
  fi
  if [[ -n $users ]]; then
    local first=${users%%,*}
    echo "sasl.enabled.mechanisms=SCRAM-SHA-256"
    echo "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-256"
    echo "listener.name.${protocol,,}.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"${first%%:*}\" password=\"${first#*:}\";"
  fi
}

is_up() { (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; }

running_pid() {
  [[ -f $pidfile ]] || return 1
  local pid; pid=$(cat "$pidfile")
  kill -0 "$pid" 2>/dev/null && echo "$pid"
}

case $cmd in
  install) install ;;
  run)
    configure
    log "running in the foreground, data in $data"
    # The JVM runs in its own session, so a Ctrl-C for the whole demo reaches only this script:
    # it gives the workers KAFKA_STOP_DELAY_S (8 s) to commit their offsets and leave the group
    # before the broker goes away under them.
    setsid bash -c "$(declare -f java_run); heap='$heap' here='$here' data='$data' lib='$lib' java_run kafka.Kafka '$data/server.properties'" &
    pid=$!; echo $pid > "$pidfile"
    trap 'sleep ${KAFKA_STOP_DELAY_S:-8}; kill -TERM $pid 2>/dev/null; wait $pid || true; rm -f "$pidfile"; exit 143' INT TERM
    wait $pid
    ;;
  start|spawn)
    if pid=$(running_pid); then log "already running (pid $pid)"; exit 0; fi
    configure
    nohup bash -c "$(declare -f java_run); heap='$heap' here='$here' data='$data' lib='$lib' java_run kafka.Kafka '$data/server.properties'" \
      >"$data/stdout.log" 2>&1 &
    echo $! > "$pidfile"
    [[ $cmd == spawn ]] && { log "spawned (pid $!), not waiting"; exit 0; }
    for _ in $(seq 1 600); do
      if is_up; then log "up on $host:$port (pid $(cat "$pidfile")), data in $data"; exit 0; fi
      if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        log "exited during start-up; last lines of $data/stdout.log:"; tail -n 20 "$data/stdout.log" >&2; exit 1
      fi
      sleep 0.1
    done
    log "not listening after 60 s; see $data/server.log"; exit 1
    ;;
  stop)
    if ! pid=$(running_pid); then log "not running"; exit 0; fi
    kill -TERM "$pid"
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || { log "stopped"; rm -f "$pidfile"; exit 0; }; sleep 0.1; done
    log "did not stop in 30 s; killing"; kill -KILL "$pid"; rm -f "$pidfile"
    ;;
  status)
    if pid=$(running_pid) && is_up; then log "running (pid $pid)"; else log "not running"; exit 1; fi
    ;;
  wait)
    for _ in $(seq 1 900); do is_up && { log "up"; exit 0; }; sleep 0.1; done
    log "not listening after 90 s"; exit 1
    ;;
  *) echo "usage: $0 install|start|spawn|wait|run|stop|status [PORT]" >&2; exit 2 ;;
esac
