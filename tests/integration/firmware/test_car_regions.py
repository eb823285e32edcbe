"""The car across regions (docs/firmware.md "Regions and overflow"), on the virtual
board with the unmodified firmware against real Mosquitto brokers (auth and ACL on), one per
region:

- an overflow answer: region north's gateway (scripted: a paho client as north's gateway user)
  answers the car's reserve with a slot held in region south, which is not in the car's
  config.json; the car hands over to south's broker and confirms there (a paho client as
  south's gateway user answers; its first confirm goes unanswered, so the car repeats it
  with the same rid); when south's reservation ends, the car goes back to the region its
  position is in and asks there;
- a car driving over a boundary with a confirmed reservation (the real gateways of two
  regions) keeps the reservation and stays with its region until it ends, then follows its
  position.
"""
from __future__ import annotations

import json
import time

import pytest

from harness import micropython as mp
from harness.broker import MONITOR_USER
from harness.car_board import (
    ScriptedGateway,
    World,
    car_config,
    pot_for,
    region_broker,
    reservation,
    reservations,
    virtual_board,
)
from harness.wait import wait_until
from recarga.core.model import SlotMeta, StationMeta
from recarga.core.protocol import central as PC
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W

pytestmark = pytest.mark.integration

AC22 = SlotMeta(22.0, False)


def board_ok(board) -> None:
    text = board.serial_text()
    assert "Traceback" not in text and "MemoryError" not in text, text[-3000:]


def test_overflow_answer_hands_over_to_the_other_regions_broker_and_confirms_there(tmp_path):
    north = region_broker(tmp_path / "north", "north", ["car-a"], tls=tmp_path / "ca")  # one CA signs both
    south = region_broker(tmp_path / "south", "south", ["car-a"], tls=tmp_path / "ca")
    held = reservation("r-south-1", station="st-s", slot=2)
    gws: list[ScriptedGateway] = []
    board = None

    def north_answers(req: D.CarRequest) -> list[dict]:
        if req.op == "reserve" and gws[0].ops().count(("reserve", None)) == 1:  # the first: overflow
            return [PC.overflow_reply(req.rid, held, "south", {"host": "127.0.0.1", "port": south.port})]
        return []  # later ones: no answer (the test only looks at where they arrive)

    def south_answers(req: D.CarRequest) -> list[dict]:
        if req.op == "confirm" and len([r for r in gws[1].requests if r.op == "confirm"]) > 1:
            return [D.ok_reply(req.rid, "confirm", dict(held, state="confirmed", hold_until=1795000900))]
        return []  # the first confirm goes unanswered

    try:
        gws.append(ScriptedGateway(north, "north", "car-a", north_answers))
        gws.append(ScriptedGateway(south, "south", "car-a", south_answers))
        gw_n, gw_s = gws
        board = virtual_board(tmp_path / "vb", car_config("car-a", "north", north.port, telemetry_s=3600,
                                                              ca_file=north.ca_file))
        board.set_pot("pot1", pot_for(0.6))
        board.start()
        board.wait_serial("mqtt: connected", timeout=15)
        mark = board.mark()
        board.set_pot("pot1", pot_for(0.15))
        gw_n.wait_request("reserve")
        line = board.wait_serial("car: overflow: slot held in region south", timeout=10, since=mark)
        assert line.endswith(f"handing over to its broker 127.0.0.1:{south.port}")
        board.wait_serial("slot reserved: station st-s slot 2", timeout=5, since=mark)
        line = board.wait_serial("car: handing over to region south", timeout=5, since=mark)
        assert line.endswith(f"broker 127.0.0.1:{south.port}")

        # the confirm goes to south's broker, on south's topic; unanswered, the same rid again
        first = gw_s.wait_request("confirm", 1, timeout=10)
        assert first.fields == {"reservation": "r-south-1"}
        again = gw_s.wait_request("confirm", 2, timeout=25)
        assert again.rid == first.rid
        board.wait_serial("confirmed r-south-1: kept until", timeout=10, since=mark)
        assert wait_until(lambda: gw_n.online() is False and gw_s.online() is True, timeout=5,
                          what="the car offline on north (clean goodbye), online on south")
        assert gw_n.ops() == [("reserve", None)] and gw_n.errors == gw_s.errors == []
        # its position is north's: the reservation keeps the session with south meanwhile
        board.wait_serial("car: now in region north at ", timeout=5, since=mark)
        board.write_serial("status\r")
        status = board.wait_serial("car-a: heading", timeout=5, since=mark)
        assert "reservation r-south-1" in status and "region south" in status

        # south's reservation ends: the car follows its position (north) again, asks there
        mark = board.mark()
        gw_s.send(D.car_event("expired", dict(held, state="expired")))
        board.wait_serial("reservation r-south-1 expired: asking again", timeout=10, since=mark)
        assert "now in region north" in board.wait_serial("car: left region south", timeout=5, since=mark)
        board.wait_serial("car: handing over to region north", timeout=5, since=mark)
        gw_n.wait_request("reserve", 2, timeout=15)
        assert [op for op, _ in gw_s.ops()] == ["confirm", "confirm"]  # nothing asked in south
        assert wait_until(lambda: gw_n.online() is True and gw_s.online() is False, timeout=5,
                          what="back on north")
        board_ok(board)
    finally:
        if board is not None:
            board.stop()
        for g in gws:
            g.close()
        north.stop()
        south.stop()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def test_a_car_crossing_a_boundary_keeps_its_confirmed_reservation_and_its_region(world, tmp_path):
    bn, gwn = world.region("north", ["car-a"], [StationMeta("st-n", 52.52, 13.40, (AC22,), operator="op")])
    bs, gws = world.region("south", ["car-a"], [StationMeta("st-s", 51.05, 13.74, (AC22,), operator="op")])
    on_n = world.client(bn, MONITOR_USER)  # reads the cars' online flags beside the gateway
    on_s = world.client(bs, MONITOR_USER)
    for c, region in ((on_n, "north"), (on_s, "south")):
        c.subscribe(D.car_topic(region, "car-a", "online"))

    def online(c, region):
        got = c.messages(D.car_topic(region, "car-a", "online"))
        return D.parse_online(got[-1].payload) if got else None

    regions = [{"name": "north", "host": "127.0.0.1", "port": bn.port, "bounds": [52.0, 13.0, 53.0, 14.0]},
               {"name": "south", "host": "127.0.0.1", "port": bs.port, "bounds": [50.5, 13.0, 51.5, 14.5]}]
    board = virtual_board(tmp_path / "vb", car_config("car-a", "north", bn.port, regions=regions, ca_file=world.ca_file))
    world.cars.append(board)
    board.set_pot("pot1", pot_for(0.6))
    board.start()
    board.wait_serial("mqtt: connected", timeout=15)
    board.set_pot("pot1", pot_for(0.15))
    board.wait_serial("slot reserved: station st-n slot 1", timeout=15)
    [r] = wait_until(lambda: [r for r in reservations(gwn) if r["state"] == "confirmed"], what="confirmed")

    # the car crosses into south: it keeps the reservation and the session with north
    mark = board.mark()
    board.write_serial("pos 51.06 13.75\r")
    line = board.wait_serial("car: now in region south at 51.06000 13.75000", timeout=5, since=mark)
    assert line.endswith(f"staying with region north while reservation {r['id']} lasts")
    time.sleep(3.0)  # three more region checks
    lines = board.serial_lines(mark)
    assert not any("left region" in ln or "handing over" in ln or "gave back" in ln for ln in lines), lines
    assert sum("staying with region north" in ln for ln in lines) == 1  # said once, not every check
    assert [x["state"] for x in reservations(gwn)] == ["confirmed"] and reservations(gws) == []
    assert online(on_n, "north") is True and online(on_s, "south") is None
    board.write_serial("status\r")
    status = board.wait_serial("car-a: heading", timeout=5, since=mark)
    assert f"reservation {r['id']}" in status and "region north" in status

    # it ends (plugged in and out at the slot): from then on the session follows the position
    st = world.station("st-n")
    mark = board.mark()
    st.publish(D.station_topic("north", "st-n", "status"), W.encode(D.station_status(["occupied"])), retain=True)
    board.wait_serial("checked in at station st-n", timeout=10, since=mark)
    st.publish(D.station_topic("north", "st-n", "status"), W.encode(D.station_status(["free"])), retain=True)
    board.wait_serial("completed, driving on", timeout=10, since=mark)
    assert "now in region south" in board.wait_serial("car: left region north", timeout=5, since=mark)
    board.wait_serial("car: handing over to region south", timeout=5, since=mark)
    board.wait_serial("mqtt: connected", timeout=10, since=mark)
    assert wait_until(lambda: online(on_s, "south") is True and online(on_n, "north") is False, timeout=5,
                      what="online on south, offline on north")
    assert [x["state"] for x in reservations(gwn)] == ["completed"] and reservations(gws) == []
    board_ok(board)


def test_handover_to_regions_not_in_the_config_takes_one_spare_entry(tmp_path):
    """car_app.handover() on MicroPython (no broker needed: the new session connects on the
    next loop pass): topics of the new region, a region not in config.json takes the one spare
    entry after the configured and home ones, so nothing grows however many it meets."""
    cfg = dict(car_config("car-a", "north", 1884), log="warn")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    out = mp.run_json("""
import json
import car_boot

app = car_boot.boot("config.json", (None, None, None, "b00t"))  # no loop pass: no hardware used
def show():
    print(json.dumps({"region": app.region, "regions": app.regions, "topics": app.topics,
                      "session": app.session.args[1:3]}))
app.open_session()  # what the first loop pass does
show()
for name, port in (("south", 1885), ("east", 1886), ("east", 1886), ("north", 1884)):
    app.handover(name, "10.0.0.%d" % (port - 1880), port)
    show()
""", board="car", cwd=tmp_path)
    assert [o["region"] for o in out] == [0, 2, 2, 2, 2]
    assert [len(o["regions"]) for o in out] == [2, 3, 3, 3, 3]
    assert out[1]["regions"][2] == ["south", "10.0.0.5", 1885] and out[2]["regions"][2] == ["east", "10.0.0.6", 1886]
    assert out[1]["topics"] == {"request": "recarga/v1/south/car/car-a/request",
                                "telemetry": "recarga/v1/south/car/car-a/telemetry"}
    assert out[2]["session"] == ["10.0.0.6", 1886]
    assert out[4]["regions"][2] == ["north", "10.0.0.4", 1884] and out[4]["session"] == ["10.0.0.4", 1884]
