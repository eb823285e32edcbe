"""recarga-gateway's reservations command over a real database file."""
from __future__ import annotations

import json
from pathlib import Path

from recarga.core.model import CarNeed, Reservation
from recarga.gateway import cli
from recarga.gateway.store import Store

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
NEED = CarNeed(52.52, 13.40, 0.2, 50, 17, 11, 0, 0.8)


def reservation(rid: str, car: str, state: str) -> Reservation:
    return Reservation(f"r-{rid}", car, rid, "s1", 1, state, T0, T0 + 60, T0 + 600, T0 + 600, T0 + 3600,
                       T0 + 1200, 1.0, 0.0, 3000.0, 30.0, 12.0, 11.0, NEED)


def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text('region = "t"\ndatabase = "gw.db"\nstations = "st.json"\n')
    return path


def test_active_reservations_of_one_car_with_readable_times(tmp_path, capsys):
    store = Store(tmp_path / "gw.db")
    store.commit([reservation("a1", "car-a", "confirmed"), reservation("a0", "car-a", "expired"),
                  reservation("b1", "car-b", "held")], None)
    store.close()
    assert cli.main(["reservations", "--config", str(config(tmp_path)), "--active", "--car", "car-a"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "r-a1 car=car-a rid=a1 s1/1 confirmed eta=2027-01-15T08:10:00Z start=2027-01-15T08:10:00Z "
        "end=2027-01-15T09:00:00Z"]
    assert cli.main(["reservations", "--config", str(config(tmp_path)), "--car", "car-a", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["rid"] for r in rows} == {"a0", "a1"} and rows[0]["eta"] == T0 + 600  # JSON keeps Unix seconds


def test_a_mistyped_database_path_is_an_error_and_creates_nothing(tmp_path, capsys):
    assert cli.main(["reservations", "--config", str(config(tmp_path))]) == 2
    assert "gw.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "gw.db").exists()


def test_run_refuses_a_damaged_database_with_the_status_the_unit_does_not_restart_on(tmp_path, caplog):
    (tmp_path / "st.json").write_text('{"v": 1, "stations": []}')
    (tmp_path / "gw.db").write_bytes(b"not a database, just some bytes" * 200)
    assert cli.main(["run", "--config", str(config(tmp_path))]) == 78
    assert "is damaged" in caplog.text and "not starting" in caplog.text


def test_backup_copies_the_database_to_a_new_file(tmp_path, capsys):
    store = Store(tmp_path / "gw.db")
    store.commit([reservation("a1", "car-a", "confirmed")], None)
    store.close()
    assert cli.main(["backup", "--config", str(config(tmp_path)), "--to", str(tmp_path / "b.db")]) == 0
    assert "backed up" in capsys.readouterr().out
    assert [r.rid for r in Store(tmp_path / "b.db").reservations()] == ["a1"]
    assert cli.main(["backup", "--config", str(config(tmp_path)), "--to", str(tmp_path / "b.db")]) == 2
    assert "exists" in capsys.readouterr().err
