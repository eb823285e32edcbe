# Runs on MicroPython: a firmware/lib Session against a real broker, for test_session.py.
# argv[1] is a JSON file (the unix port cannot take arguments over 255 bytes) with cid host port user password keepalive will subs status base cap timeout run_ms,
# and for TLS ca (the CA certificate, base64 DER as in config.json) and server_name.
# Prints one line per event. Control messages arrive on the subscribed topic as payloads:
#   "handover <port>" (disconnect, then a new Session to that port, as a car's region
#   hand-over does)  "disconnect"  "publish <text>"  "pid <n>"  "mem"  "exit"
import gc
import json
import sys
import time

import log
from backoff import Backoff
from session import Session

with open(sys.argv[1]) as f:
    P = json.load(f)
log.level(P.get("log", "info"))
state = {"exit": False}


def on_message(topic, msg):
    global s
    print("MSG", topic.decode(), msg.decode())
    words = msg.decode().split(" ", 1)
    if words[0] == "handover":
        s.disconnect()
        s = session(int(words[1]))
    elif words[0] == "disconnect":
        s.disconnect()
    elif words[0] == "publish":
        print("PUB", s.publish(P["status"], words[1], True))
    elif words[0] == "pid":
        s.client.pid = int(words[1])
    elif words[0] == "mem":
        gc.collect()
        print("MEM", gc.mem_free(), gc.mem_alloc())
    elif words[0] == "exit":
        state["exit"] = True


def on_connect():
    print("CONNECTED")
    print("PUB", s.publish(P["status"], b'{"v":1,"slots":["free"],"seq":0}', True))


def session(port):
    n = Session(P["cid"], P["host"], port, P["user"], P["password"], P["keepalive"], P["will"],
                on_message, Backoff(P.get("base", 200), P.get("cap", 2000)), None, P.get("timeout", 5))
    for t in P.get("subs", ()):
        n.subscribe(t)
    if P.get("ca"):
        import pinned

        n.tls = (pinned.context(P["ca"]), P["server_name"])
    n.on_connect = on_connect
    return n


s = session(P["port"])
print("OFFLINE_PUB", s.publish(P["status"], b"x", True))
end = time.ticks_add(time.ticks_ms(), P.get("run_ms", 60000))
while not state["exit"] and time.ticks_diff(end, time.ticks_ms()) > 0:
    s.poll(time.ticks_ms())
    time.sleep_ms(10)
print("END")
