#!/usr/bin/env bash
# One single-node KRaft site for docker-compose.yml, configured like compose/kafka.py does on
# a bare machine: loopback-free listeners named after the service, replication factor 1,
# broker append time, and transaction.version=1 (kafka-python's transactions).
# KAFKA_HOME and KAFKA_STATE default to the apache/kafka image's paths; tests/netcompose.py sets
# them to run this script as it is without Docker.
set -euo pipefail
: "${SITE:?SITE (the service name) must be set}"
kafka=${KAFKA_HOME:-/opt/kafka}
state=${KAFKA_STATE:-/var/lib/kafka}
props=$state/server.properties
mkdir -p "$state/data"
cat > "$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${SITE}:9093
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://${SITE}:9093
advertised.listeners=PLAINTEXT://${SITE}:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$state/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
min.insync.replicas=1
PROPS
"$kafka/bin/kafka-storage.sh" format --standalone -g -t "${CLUSTER_ID}" -c "$props" -f transaction.version=1
exec "$kafka/bin/kafka-server-start.sh" "$props"
