"""Slots that disappear and an operator's commands: sessions on a slot a station no longer
has end (faulted, the car offered another slot), and `recarga-gateway reservation end` /
`slot out-of-service` / `slot in-service` act through the engine (pure), queued in the
gateway's database (GatewayService without a broker, tests/gateway/conftest.py) and from the
CLI. The same with the real gateway process and Mosquitto:
tests/integration/gateway/test_gateway_slot_admin.py."""
from __future__ import annotations

import logging

import pytest
from test_engine import REGION, T0, cmds, make, replies, reserve, stations, status

from harness.wait import wait_until
from recarga.core.protocol import device as D
from recarga.core.protocol import wire as W
from recarga.gateway import admin, cli
from recarga.gateway import service as S
from recarga.gateway.engine import CommandRefused, Engine, EngineConfig, Result
from recarga.gateway.store import Store


def meta(slots: int) -> bytes:
    return W.encode({"v": 1, "lat": 52.5200, "lon": 13.4050, "slots": [{"power_kw": 22}] * slots})


def check_in(e: Engine, car: str, rid: str, now: float = T0) -> dict:
    """Reserve for `car` and plug it in at the slot it got; the checked-in reservation."""
    r = replies(reserve(e, car, rid, now), car)[0]["reservation"]
    live = e.live[r["station"]].slots
    slots = list(live)
    slots[r["slot"] - 1] = "occupied"
    [ev] = replies(status(e, r["station"], slots, now + 1), car)
    assert ev["event"] == "checked_in"
    return ev["reservation"]


def events(res: Result, car: str) -> list[str]:
    return [m["event"] for m in replies(res, car) if "event" in m]


# ---------------------------------------------------------------- slots that disappear

def test_a_session_ends_when_its_slot_leaves_the_stations_metadata(caplog):
    e = make()
    check_in(e, "c1", "q1")  # near slot 1
    r2 = check_in(e, "c2", "q1")  # near slot 2
    assert (r2["station"], r2["slot"]) == ("near", 2)
    with caplog.at_level(logging.WARNING, "recarga.engine"):
        res = e.station_meta("near", meta(1), T0 + 10)
    [ev] = replies(res, "c2")
    assert ev["event"] == "faulted" and ev["reservation"]["state"] == "faulted"
    assert ev["offer"]["station"] == "far"  # the next best slot
    assert "station near slot 2 no longer exists (its metadata has 1 slots)" in caplog.text
    assert [r.state for r in res.changed if r.id == r2["id"]] == ["faulted"]
    assert cmds(res, "near") == []  # no command for a slot the station does not have
    assert replies(res, "c1") == [] and len(e.by_slot[("near", 1)]) == 1  # slot 1's session goes on
    # the car is free to ask again (a stuck session would answer bad_state)
    assert replies(reserve(e, "c2", "q2", T0 + 20), "c2")[0]["ok"]


def test_a_restored_session_on_a_station_gone_from_the_file_ends_at_the_first_tick(caplog):
    e = make()
    r = check_in(e, "c1", "q1", T0)  # near slot 1
    check_in(e, "c2", "q1", T0)  # near slot 2
    far = check_in(e, "c3", "q1", T0)
    assert far["station"] == "far"
    # restarted with "far" no longer in the station file
    e2 = Engine(EngineConfig(region=REGION, hold_s=60, grace_s=300), [s for s in stations() if s.id == "near"])
    e2.restore(list(e.reservations.values()), [], {sid: e.live[sid] for sid in ("near",)})
    with caplog.at_level(logging.WARNING, "recarga.engine"):
        res = e2.tick(T0 + 30)
    assert events(res, "c3") == ["faulted"] and events(res, "c1") == []
    assert f"reservation {far['id']} (car c3): station far is not in the station file" in caplog.text
    assert far["id"] not in e2.reservations and r["id"] in e2.reservations
    assert e2.tick(T0 + 31).changed == []  # once
    assert replies(reserve(e2, "c3", "q2", T0 + 40), "c3")[0]["error"]["code"] != D.BAD_STATE


def test_a_restored_session_whose_station_announces_itself_before_the_first_tick_goes_on():
    e = make()
    r = check_in(e, "c1", "q1")
    e2 = Engine(EngineConfig(region=REGION, hold_s=60, grace_s=300), [])
    e2.restore(list(e.reservations.values()), [])
    e2.station_meta("near", meta(2), T0 + 5)  # its retained meta, read in the catch-up
    assert e2.tick(T0 + 30).changed == [] and r["id"] in e2.reservations


# ---------------------------------------------------------------- operator commands (engine)

def test_out_of_service_faults_the_slots_reservations_and_the_slot_is_never_offered():
    e = make()
    r = replies(reserve(e, "c1", "q1"), "c1")[0]["reservation"]
    assert (r["station"], r["slot"]) == ("near", 1)
    res, message = e.take_out_of_service("near", 1, "cable broken", T0 + 5)
    assert message == "station near slot 1 out of service (cable broken); 1 reservation(s) faulted"
    [ev] = replies(res, "c1")
    assert ev["event"] == "faulted" and (ev["offer"]["station"], ev["offer"]["slot"]) == ("near", 2)
    assert [c for c in cmds(res, "near") if c["slot"] == 1] == [D.station_cmd("release", 1),
                                                                 D.station_cmd("out_of_service", 1)]
    assert res.marks[0][:2] == ("near", 1) and res.marks[0][2].reason == "cable broken"
    # whatever the station reports, slot 1 is not offered (c2 gets near 2's queue or far)
    status(e, "near", ["free", "free"], T0 + 6)
    assert e.live["near"].slots[0] == "out_of_service"
    for i in range(2, 6):
        got = replies(reserve(e, f"c{i}", "q1", T0 + 7), f"c{i}")[0]
        assert not got["ok"] or (got["reservation"]["station"], got["reservation"]["slot"]) != ("near", 1)
    with pytest.raises(CommandRefused, match="already out of service since .* \\(cable broken\\)"):
        e.take_out_of_service("near", 1, "again", T0 + 8)


@pytest.mark.parametrize("sid, slot, match", [("nowhere", 1, "unknown station 'nowhere'"),
                                              ("far", 2, "station far has 1 slot\\(s\\); there is no slot 2")])
def test_out_of_service_of_a_slot_that_does_not_exist_is_refused(sid, slot, match):
    e = make()
    with pytest.raises(CommandRefused, match=match):
        e.take_out_of_service(sid, slot, "x", T0)
    assert e.out_of_service == {}


def test_in_service_tells_the_station_and_the_slot_is_offered_once_it_reports_free():
    e = make()
    e.take_out_of_service("far", 1, "repair", T0)
    with pytest.raises(CommandRefused, match="station near slot 1 is not out of service"):
        e.put_in_service("near", 1, T0)
    res, _ = e.put_in_service("far", 1, T0 + 1)
    assert cmds(res, "far") == [D.station_cmd("in_service", 1)] and res.marks == [("far", 1, None)]
    assert e.out_of_service == {}
    # until the station confirms, it is told again whenever it comes online
    e.station_online("far", W.online_message(False), T0 + 2)
    assert cmds(e.station_online("far", W.online_message(True), T0 + 3), "far") == [D.station_cmd("in_service", 1)]
    status(e, "far", ["free"], T0 + 4)
    assert cmds(e.station_online("far", W.online_message(True), T0 + 5), "far") == []
    assert e.free_slots("far") == 1
    with pytest.raises(CommandRefused, match="not out of service"):
        e.put_in_service("far", 1, T0 + 6)
    # a slot its station reports out of service can be put back too (the station is told)
    status(e, "far", ["out_of_service"], T0 + 7)
    assert cmds(e.put_in_service("far", 1, T0 + 8)[0], "far") == [D.station_cmd("in_service", 1)]


def test_a_station_back_online_is_told_its_out_of_service_slots_again_and_marks_survive_a_restart():
    e = make()
    e.take_out_of_service("near", 2, "repair", T0)
    e.station_online("near", W.online_message(False), T0 + 1)
    res = e.station_online("near", W.online_message(True), T0 + 2)
    assert cmds(res, "near") == [D.station_cmd("out_of_service", 2)]
    e2 = make()
    e2.restore([], [], marks={("near", 2): e.out_of_service["near"][2]})
    status(e2, "near", ["free", "free"], T0 + 3)
    assert e2.live["near"].slots == ["free", "out_of_service"] and e2.free_slots("near") == 1


def test_end_reservation_completes_a_session_and_cancels_a_held_one_telling_the_car():
    e = make()
    r1 = check_in(e, "c1", "q1")
    r2 = replies(reserve(e, "c2", "q1"), "c2")[0]["reservation"]
    res, message = e.end_reservation(r1["id"], T0 + 5)
    assert message == f"reservation {r1['id']} (car c1, near slot 1, checked_in) completed"
    assert events(res, "c1") == ["completed"] and res.changed[0].state == "completed"
    res, _ = e.end_reservation(r2["id"], T0 + 6)
    assert events(res, "c2") == ["cancelled"] and replies(res, "c2")[0]["reservation"]["state"] == "cancelled"
    assert cmds(res, r2["station"]) == [D.station_cmd("release", r2["slot"])]
    assert e.reservations == {}
    with pytest.raises(CommandRefused, match="no active reservation 'r-none'"):
        e.end_reservation("r-none", T0 + 7)
    assert replies(reserve(e, "c1", "q2", T0 + 8), "c1")[0]["ok"]


@pytest.mark.parametrize("op, args, match", [
    (admin.RESERVATION_END, {"reservation": "a b"}, "reservation id 'a b' is not valid"),
    (admin.SLOT_OUT_OF_SERVICE, {"station": "a/b", "slot": 1}, "station id 'a/b' is not valid"),
    (admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 0}, "slot 0 is not a slot number"),
    (admin.SLOT_IN_SERVICE, {"station": "s1", "slot": True}, "slot True is not a slot number"),
    (admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 1, "reason": "x" * 201}, "at most 200"),
    ("slot_explode", {}, "unknown operator command 'slot_explode'"),
])
def test_bad_command_arguments_are_named(op, args, match):
    with pytest.raises(ValueError, match=match):
        admin.check(op, args)


# ---------------------------------------------------------------- through the database (service)

def done(svc: S.GatewayService) -> list[tuple]:
    return svc.store.db.execute("SELECT id, ok, result FROM operator_commands WHERE done_at IS NOT NULL "
                                "ORDER BY id").fetchall()


def test_the_service_applies_queued_commands_with_its_tick_and_stores_their_outcome(make_service, message):
    svc = make_service("tick_s = 0.01")
    db = svc.cfg.database
    a = admin.submit(db, admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 1, "reason": "repair"})
    b = admin.submit(db, admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 1})
    c = admin.submit(db, admin.RESERVATION_END, {"reservation": "r-none"})
    assert admin.wait(db, a, 0) is None  # queued, not applied yet
    # a batch with the station's messages and the first tick, which applies the commands after them
    svc.handle([message(D.station_topic("t", "s1", "online"), W.online_message(True), 1),
                message(D.station_topic("t", "s1", "status"), W.encode(D.station_status(["free"])), 2)])
    assert [(cid, ok) for cid, ok, _ in done(svc)] == [(a, 1), (b, 0), (c, 0)]
    assert admin.wait(db, a, 0) == (True, "station s1 slot 1 out of service (repair); 0 reservation(s) faulted")
    assert admin.wait(db, b, 0)[1].startswith("station s1 slot 1 is already out of service since 20")
    assert admin.wait(db, c, 0) == (False, "no active reservation 'r-none'")
    assert (D.station_topic("t", "s1", "cmd"), W.encode(D.station_cmd("out_of_service", 1))) in svc.client.events
    assert list(svc.store.slots_out_of_service()) == [("s1", 1)]
    assert svc.store.stations_live()["s1"].slots == ["out_of_service"]
    first = svc.next_tick
    wait_until(lambda: svc.handle([]) and svc.next_tick > first, 5, "the next tick")
    assert len(done(svc)) == 3  # each applied once


def test_a_command_queued_while_the_gateway_is_down_is_applied_when_it_starts(make_service, message):
    svc = make_service()
    cfg, db = svc.cfg, svc.cfg.database
    svc.close()
    command = admin.submit(db, admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 1, "reason": "flooded"})
    outbox = type(svc.client)  # conftest's Outbox
    svc2 = S.GatewayService(cfg, client_factory=lambda broker, region: outbox([]), exit_process=lambda code: None)
    try:
        assert svc2.handle([])  # its first tick
        assert admin.wait(db, command, 0)[0] is True
        assert svc2.engine.out_of_service["s1"][1].reason == "flooded"
    finally:
        svc2.close()
    # and the mark survives the next restart
    svc3 = S.GatewayService(cfg, client_factory=lambda broker, region: outbox([]), exit_process=lambda code: None)
    try:
        assert svc3.engine.out_of_service["s1"][1].reason == "flooded"
    finally:
        svc3.close()


# ---------------------------------------------------------------- the CLI

def config(tmp_path) -> str:
    (tmp_path / "st.json").write_text('{"v": 1, "stations": []}')
    path = tmp_path / "gateway.toml"
    path.write_text('region = "t"\ndatabase = "gw.db"\nstations = "st.json"\n')
    return str(path)


def test_cli_queues_a_command_and_says_when_the_gateway_did_not_apply_it(tmp_path, capsys):
    conf = config(tmp_path)
    assert cli.main(["slot", "out-of-service", "--config", conf, "s1", "1", "--no-wait"]) == 2
    assert "gw.db does not exist" in capsys.readouterr().err and not (tmp_path / "gw.db").exists()
    Store(tmp_path / "gw.db").close()
    assert cli.main(["slot", "out-of-service", "--config", conf, "s1", "2", "--reason", "repair", "--no-wait"]) == 0
    assert capsys.readouterr().out == "queued as command 1; the gateway applies it with its next tick\n"
    assert cli.main(["reservation", "end", "--config", conf, "r123", "--timeout", "0"]) == cli.EXIT_NOT_APPLIED
    assert "command 2 queued but not applied within 0 s (is the gateway running?)" in capsys.readouterr().err
    store = Store(tmp_path / "gw.db")
    assert [(c, op, args) for c, op, args in store.pending_commands()] == [
        (1, admin.SLOT_OUT_OF_SERVICE, {"station": "s1", "slot": 2, "reason": "repair"}),
        (2, admin.RESERVATION_END, {"reservation": "r123"})]
    store.close()
    assert cli.main(["slot", "in-service", "--config", conf, "bad/id", "1"]) == 2
    assert "station id 'bad/id' is not valid" in capsys.readouterr().err
