"""Injection into a TLS region broker during a burst of real cars' requests: a client that
speaks plain MQTT to the TLS port and one that trusts another CA, each holding a real car's
and a real station's password, try to slip in a request and a status. Both are refused
before MQTT starts, nothing of theirs reaches the broker's topics, the burst is served and
the invariants hold."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.broker import MONITOR_USER, REGION, make_tls
from harness.clients import cli_publish
from harness.region import reserve_msg, station_set
from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration


def test_plain_and_foreign_ca_clients_cannot_inject_during_a_burst_over_tls(scenario, tmp_path: Path):
    cars = [f"t{i:02d}" for i in range(30)]
    s = scenario(cars, station_set(20, 2), tls=True)
    broker = s.region.broker
    assert broker.ca_file is not None
    monitor = s.region.client(MONITOR_USER)  # over TLS, trusting the broker's CA: sees what gets in
    monitor.subscribe(f"recarga/v1/{REGION}/#")
    for c in cars:
        s.car(c)
    other_ca = Path(make_tls(tmp_path / "other").cafile)
    injections = [("t00", D.car_topic(REGION, "t00", "request"),
                   W.encode(D.reserve_request("injected", "t00", lat=52.52, lon=13.40, soc=0.2, battery_kwh=58,
                                              consumption_kwh_100km=16.6, max_ac_kw=11, max_dc_kw=100,
                                              target_soc=0.8)).decode()),
                  ("st-1", D.station_topic(REGION, "st-1", "status"),
                   W.encode(D.station_status(["occupied", "occupied"], seq=1_000_000)).decode())]
    half = len(cars) // 2
    for c in cars[:half]:
        s.ledger.send(c, reserve_msg(c, "q1"), "q1")
    for user, topic, payload in injections:  # while the first half is being served
        plain = cli_publish(broker, user, topic, payload, tls=False)
        assert plain.returncode != 0 and "connection was lost" in plain.stderr.lower(), plain
        foreign = cli_publish(broker, user, topic, payload, ca_file=other_ca)
        assert foreign.returncode != 0 and "tls error" in foreign.stderr.lower(), foreign
    for c in cars[half:]:
        s.ledger.send(c, reserve_msg(c, "q1"), "q1")
    wait_until(lambda: s.ledger.answered() == len(cars), 20,
               lambda: f"an answer for every car ({s.ledger.answered()} of {len(cars)})", s.gw.alive, every=0.1)
    assert all(r[0]["ok"] for c in cars if (r := s.ledger.replies(c, "q1"))), "a car of the burst refused"
    requests = monitor.wait(lambda: len(monitor.messages(D.car_filter(REGION, "request"))) >= len(cars) or None,
                            5, "the burst's requests seen by the monitor")
    assert requests is True  # what got in is seen: the monitor is a fair witness
    got_in = [(m.topic, m.payload) for m in monitor.messages() if b"injected" in m.payload
              or b"1000000" in m.payload]
    assert got_in == []
    snap = s.check()
    assert not [r for r in snap.reservations if r.rid == "injected"]
    assert len(snap.reservations) == len(cars)
