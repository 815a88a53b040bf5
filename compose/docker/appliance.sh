#!/usr/bin/env bash
# One appliance for docker-compose.yml: create its home on first start (Kafka log on its own
# site's cluster), pair it (transport kafka-sites), then run the service and the mirror.
# Optional: DSSYNC_ROOT (where homes live), PEER_ADDRESS and LISTEN (host:port of the pair
# link), KAFKA_TOPIC_PREFIX (two pairs on the same clusters); tests/kafka/test_compose_files.py runs
# this script as it is, without Docker, against two local brokers.
set -euo pipefail
: "${NAME:?}" "${ROLE:?}" "${PEER:?}" "${KAFKA:?}" "${PEER_KAFKA:?}" "${DSSYNC_SYNC_SECRET:?}"
home=${DSSYNC_ROOT:-/var/lib/dssync}/${NAME}
if [ ! -f "$home/dssync.toml" ]; then
  dssync init "$home" --name "$NAME" --model "${MODEL:-SH-7080}" --version "${VERSION:-9.14}" --kafka "$KAFKA" \
    ${KAFKA_TOPIC_PREFIX:+--kafka-topic-prefix "$KAFKA_TOPIC_PREFIX"}
  dssync sync configure "$home" --role "$ROLE" --transport kafka-sites --peer "${PEER_ADDRESS:-$PEER:7070}" \
    --listen "${LISTEN:-0.0.0.0:7070}" --peer-kafka "$PEER_KAFKA"
fi
dssync serve "$home" &
serve=$!
dssync mirror "$home" &
mirror=$!
trap 'kill -TERM $serve $mirror; wait' TERM INT
wait -n
kill -TERM $serve $mirror 2>/dev/null || true
wait
