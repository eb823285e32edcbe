"""The gateway's paho-mqtt client, configured as the service drives it.

MQTT 3.1.1 (what the boards' umqtt.simple speaks), a persistent session (the broker keeps the
gateway's QoS 1 backlog while it is away), manual acknowledgement (the service acknowledges a
message only once what it caused is on disk), the region's online flag as Last Will, and TLS
with the configured CA when the broker config has one (recarga.core.mqtt_tls). Only paho's
documented Client API is used.
"""
from __future__ import annotations

from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from recarga.core.config_file import BrokerConfig
from recarga.core.mqtt_tls import client_context
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

ClientFactory = Callable[[BrokerConfig, str], mqtt.Client]


def gateway_client(broker: BrokerConfig, region: str) -> mqtt.Client:
    """A client for `region`'s gateway on `broker`, not yet connected."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=broker.username,  # the broker uses the user name as client id anyway
        protocol=mqtt.MQTTv311,
        clean_session=False,
        manual_ack=True,
    )
    client.username_pw_set(broker.username, broker.password)
    if broker.tls_ca is not None:
        client.tls_set_context(client_context(broker.tls_ca))
    client.will_set(D.gateway_online_topic(region), W.online_message(False), qos=W.QOS, retain=True)
    # No client-side in-flight limit: paho rescans every queued message on each PUBACK while
    # one is set. What the gateway publishes is bounded by what it reads (a batch at a time).
    client.max_inflight_messages_set(0)
    return client
