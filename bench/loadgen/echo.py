"""The echo responder: the gateway's paho-mqtt setup with nothing behind it, the baseline of
bench/gateway_load.py.

Same broker user (the gateway's ACL) and the gateway's paho-mqtt options (MQTT 3.1.1,
clean_session False, manual_ack, QoS 1, paho's network thread); per request it publishes a
fixed small JSON reply to the car's reply topic, then acknowledges the request. No parsing,
no decision, no database: what the broker, paho and the driver cost. It reads the gateway's
configuration file and takes the gateway's command line, so harness.services.ServiceProcess
runs it as it runs the gateway:

    python -m bench.loadgen.echo run --config gateway.toml
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import config as C

REPLY = W.encode({"v": W.VERSION, "ok": True, "echo": True})


def client_id(region: str) -> str:
    """The echo's MQTT client id (its persistent session on the broker)."""
    return f"recarga-echo-{region}"


def serve(config_path: str) -> int:
    """Answer every car request with REPLY until SIGTERM or SIGINT."""
    cfg = C.load(config_path)
    region, b = cfg.engine.region, cfg.broker
    requests = D.car_filter(region, "request")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id(region),
                         protocol=mqtt.MQTTv311, clean_session=False, manual_ack=True)
    client.username_pw_set(b.username, b.password)
    client.max_inflight_messages_set(100)
    stop = threading.Event()

    def on_connect(c, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            print(f"echo: broker refused connection: {reason_code}", flush=True)
            return
        c.subscribe(requests, W.QOS)
        print(f"echo: connected to {b.host}:{b.port}", flush=True)

    def on_message(c, userdata, msg) -> None:
        ref = D.parse_topic(region, msg.topic)
        if ref is not None and ref.kind == "car":
            c.publish(D.car_topic(region, ref.id, "reply"), REPLY, qos=W.QOS)
        c.ack(msg.mid, msg.qos)

    client.on_connect = on_connect
    client.on_message = on_message
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    client.connect_async(b.host, b.port, keepalive=b.keepalive)
    client.loop_start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen.echo", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer car requests until SIGTERM")
    run.add_argument("--config", required=True, help="the gateway's TOML configuration")
    args = ap.parse_args(argv)
    return serve(args.config)


if __name__ == "__main__":
    sys.exit(main())
