#!/usr/bin/env bash
# Fetch Spark's Kafka source jars (pinned in ops/spark/pom.xml) from Maven Central into
# var/spark-jars (or SPARK_JARS_DIR). Idempotent: does nothing while the stamp matches the pom.
# spark_batch/session.py passes these jars to Spark with spark.jars; nothing is downloaded at run time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
jars=${SPARK_JARS_DIR:-${QUAX_SPARK_JARS_DIR:-$repo/var/spark-jars}}
stamp="$jars/.pom.sha256"
want=$(sha256sum "$here/pom.xml" | cut -d' ' -f1)
if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then exit 0; fi
echo "[spark] fetching the Spark Kafka source jars from Maven Central into $jars" >&2
rm -rf "$jars"; mkdir -p "$jars"
mvn -q -B -Dstyle.color=never -f "$here/pom.xml" dependency:copy-dependencies \
  -DexcludeTransitive=true -DoutputDirectory="$jars"
ls "$jars"/spark-sql-kafka-0-10_2.13-*.jar >/dev/null  # fail loudly if the connector is missing
echo "$want" > "$stamp"
