#!/usr/bin/env bash
# One single-node KRaft site for docker-compose.yml, configured like compose/kafka.py does on
# a bare machine: loopback-free listeners named after the service, replication factor 1,
# broker append time, and transaction.version=1 (kafka-python's transactions).
set -euo pipefail
: "${SITE:?SITE (the service name) must be set}"
props=/var/lib/kafka/server.properties
mkdir -p /var/lib/kafka/data
cat > "$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=${SITE}:9093
listeners=PLAINTEXT://0.0.0.0:9092,CONTROLLER://${SITE}:9093
advertised.listeners=PLAINTEXT://${SITE}:9092
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=/var/lib/kafka/data
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
/opt/kafka/bin/kafka-storage.sh format --standalone -g -t "${CLUSTER_ID}" -c "$props" -f transaction.version=1
exec /opt/kafka/bin/kafka-server-start.sh "$props"
