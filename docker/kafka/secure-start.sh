#!/usr/bin/env bash
# The compose broker in secure mode (docker-compose.secure.yml): one KRaft node, broker and
# controller, with the same security as `omniquant up --secure` (omniquant/stack/secure.py):
#   - clients on SASL_SSL with SCRAM-SHA-512 (INTERNAL for the compose network, EXTERNAL
#     for the host); no PLAINTEXT listener;
#   - the controller listener on mutual TLS (CN=broker maps to User:broker);
#   - the standard authorizer, allow.everyone.if.no.acl.found=false, super users broker
#     and admin.
# The storage is formatted with the SCRAM users broker and admin (the inter-broker user
# must exist before the first start); `omniquant secure apply` adds the components'.
# Secrets are files (compose secrets) and never go to the log; the properties file holding
# the inter-broker password is 0600.
set -euo pipefail

: "${CLUSTER_ID:?CLUSTER_ID is not set}"
KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
SECRETS=${SECRETS:-/run/secrets}
NODE_ID=${NODE_ID:-1}
DATA_DIR=${DATA_DIR:-/var/lib/kafka/data}
CONFIG_DIR=${CONFIG_DIR:-/tmp/omniquant-kafka}
INTERNAL_HOST=${INTERNAL_HOST:-kafka}
INTERNAL_PORT=${INTERNAL_PORT:-9092}
CONTROLLER_PORT=${CONTROLLER_PORT:-9093}
EXTERNAL_PORT=${EXTERNAL_PORT:-29092}
EXTERNAL_ADVERTISED=${EXTERNAL_ADVERTISED:-localhost:29092}
MECHANISM=SCRAM-SHA-512

secret() {
  local path="$SECRETS/$1"
  if [ ! -s "$path" ]; then
    echo "secure-start: $path is missing or empty (run: omniquant secure init secrets)" >&2
    exit 2
  fi
  tr -d '\r\n' < "$path"
}
broker_password=$(secret kafka-password-broker)
admin_password=$(secret kafka-password-admin)
for f in kafka-ca kafka-broker-keystore; do
  [ -s "$SECRETS/$f" ] || { echo "secure-start: $SECRETS/$f is missing or empty" >&2; exit 2; }
done

mkdir -p "$CONFIG_DIR" "$DATA_DIR"
umask 077
props="$CONFIG_DIR/server.properties"
cat > "$props" <<PROPS
process.roles=broker,controller
node.id=${NODE_ID}
controller.quorum.voters=${NODE_ID}@${INTERNAL_HOST}:${CONTROLLER_PORT}
controller.listener.names=CONTROLLER
listeners=INTERNAL://:${INTERNAL_PORT},CONTROLLER://:${CONTROLLER_PORT},EXTERNAL://:${EXTERNAL_PORT}
advertised.listeners=INTERNAL://${INTERNAL_HOST}:${INTERNAL_PORT},EXTERNAL://${EXTERNAL_ADVERTISED}
listener.security.protocol.map=INTERNAL:SASL_SSL,EXTERNAL:SASL_SSL,CONTROLLER:SSL
inter.broker.listener.name=INTERNAL
sasl.enabled.mechanisms=${MECHANISM}
sasl.mechanism.inter.broker.protocol=${MECHANISM}
listener.name.internal.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="${broker_password}";
listener.name.external.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=${SECRETS}/kafka-broker-keystore
ssl.truststore.type=PEM
ssl.truststore.location=${SECRETS}/kafka-ca
listener.name.controller.ssl.client.auth=required
ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:broker;User:admin
allow.everyone.if.no.acl.found=false
log.dirs=${DATA_DIR}
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS

# The operator's client settings, for the health check (kafka-broker-api-versions.sh
# --command-config) and a shell in the container.
cat > "$CONFIG_DIR/admin.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=${MECHANISM}
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="${admin_password}";
ssl.truststore.type=PEM
ssl.truststore.location=${SECRETS}/kafka-ca
PROPS

if [ ! -f "$DATA_DIR/meta.properties" ]; then
  "$KAFKA_HOME/bin/kafka-storage.sh" format --ignore-formatted -t "$CLUSTER_ID" -c "$props" \
    --add-scram "${MECHANISM}=[name=broker,password=${broker_password}]" \
    --add-scram "${MECHANISM}=[name=admin,password=${admin_password}]" \
    2>&1 | sed -e "s/${broker_password}/***/g" -e "s/${admin_password}/***/g"
fi
exec "$KAFKA_HOME/bin/kafka-server-start.sh" "$props"
