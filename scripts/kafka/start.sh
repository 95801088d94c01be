#!/usr/bin/env bash
# Starts a single-node Apache Kafka 4.x broker (KRaft, combined broker+controller) from
# Maven Central jars. Idempotent: does nothing when a broker already answers on the port.
#   KAFKA_PORT (9092)  KAFKA_DIR (./.kafka, data and log)  KAFKA_PARTITIONS (default for new topics, 4)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
port=${KAFKA_PORT:-9092}
controller_port=$((port + 1))
dir=${KAFKA_DIR:-$here/../../.kafka}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
if listening; then echo "kafka: already listening on 127.0.0.1:$port"; exit 0; fi

if [ ! -d "$here/target/lib" ] || [ -z "$(ls "$here/target/lib" 2>/dev/null)" ]; then
  echo "kafka: fetching broker jars with Maven"
  mvn -q -B -f "$here/pom.xml" dependency:copy-dependencies -DoutputDirectory=target/lib
fi
cp="$here/target/lib/*"

cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=${KAFKA_PARTITIONS:-4}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.flush.interval.messages=9223372036854775807
PROPS

if [ ! -f "$dir/data/meta.properties" ]; then
  java -cp "$cp" kafka.tools.StorageTool format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid)" \
    -c "$dir/server.properties" >"$dir/format.log" 2>&1 || { cat "$dir/format.log"; exit 1; }
fi

nohup java -Xms256m -Xmx768m -XX:+UseG1GC -cp "$cp" kafka.Kafka "$dir/server.properties" >"$dir/broker.log" 2>&1 &
echo $! >"$dir/broker.pid"
for _ in $(seq 1 120); do
  if listening; then echo "kafka: up on 127.0.0.1:$port (pid $(cat "$dir/broker.pid"))"; exit 0; fi
  if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then echo "kafka: broker exited"; tail -40 "$dir/broker.log"; exit 1; fi
  sleep 0.5
done
echo "kafka: not up after 60 s"; tail -40 "$dir/broker.log"; exit 1
