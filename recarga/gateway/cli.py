"""recarga-gateway: run the region's gateway, inspect its state, end a reservation or take a
slot out of service through it, check its configuration; print the shipped example
configuration and systemd unit to start a deployment from."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from recarga import __version__
from recarga.core import resources
from recarga.gateway import config as C
from recarga.gateway.engine import utc_text
from recarga.gateway.logbatch import LOG_FORMAT
from recarga.gateway.store import DatabaseUnusable

EXAMPLE_CONFIG = resources.DEPLOY / "gateway.example.toml"
SYSTEMD_UNIT = resources.DEPLOY / "recarga-gateway.service"


@dataclass(frozen=True)
class Command:
    """A subcommand defined outside the gateway's package (recarga.commands adds them)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _run(args: argparse.Namespace) -> int:
    from recarga.core.service_manager import ServiceManager
    from recarga.gateway.service import EXIT_DB_UNUSABLE, GatewayService
    from recarga.gateway.store import DatabaseUnusable

    cfg = C.load(args.config)
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT)
    manager = ServiceManager.from_environment()  # systemd's Type=notify; silent elsewhere
    manager.status(f"checking and loading the database {cfg.database}")
    try:
        service = GatewayService(cfg, service_manager=manager)
    except DatabaseUnusable as e:
        logging.getLogger("recarga.gateway").critical("%s; not starting", e)
        manager.status(f"not starting: {e}")
        return EXIT_DB_UNUSABLE
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    service.run()
    return 0


def _reservations(args: argparse.Namespace) -> int:
    from recarga.gateway.store import Store

    cfg = C.load(args.config)
    if not cfg.database.exists():  # opening it would create an empty one
        raise C.ConfigError(f"database {cfg.database} does not exist (the gateway creates it when it first runs)")
    store = Store(cfg.database, cfg.synchronous)
    try:
        rows = store.active() if args.active else store.reservations(args.car)
        for r in rows:
            if args.car is not None and r.car != args.car:
                continue
            if args.json:
                print(json.dumps(asdict(r)))
            else:
                print(f"{r.id} car={r.car} rid={r.rid} {r.station}/{r.slot} {r.state} "
                      f"eta={utc_text(r.eta)} start={utc_text(r.start)} end={utc_text(r.end)}")
    finally:
        store.close()
    return 0


def _backup(args: argparse.Namespace) -> int:
    from recarga.gateway.store import backup

    cfg = C.load(args.config)
    pages = backup(cfg.database, Path(args.to))
    print(f"backed up {cfg.database} to {args.to} ({pages} pages)")
    return 0


EXIT_REFUSED = 1  # the gateway applied the command and refused it (it says why)
EXIT_NOT_APPLIED = 75  # EX_TEMPFAIL: queued, not applied within --timeout (the gateway applies it when it runs)


def _operator_command(args: argparse.Namespace) -> int:
    """Queue an operator command for the gateway (gateway/admin.py) and wait for its outcome."""
    from recarga.gateway import admin

    cfg = C.load(args.config)
    command = admin.submit(cfg.database, args.op, {k: getattr(args, k) for k in args.op_args})
    if args.no_wait:
        print(f"queued as command {command}; the gateway applies it with its next tick")
        return 0
    outcome = admin.wait(cfg.database, command, args.timeout)
    if outcome is None:
        print(f"recarga-gateway: command {command} queued but not applied within {args.timeout:g} s "
              "(is the gateway running?); it is applied when the gateway runs", file=sys.stderr)
        return EXIT_NOT_APPLIED
    ok, message = outcome
    if not ok:
        print(f"recarga-gateway: refused: {message}", file=sys.stderr)
        return EXIT_REFUSED
    print(message)
    return 0


def _add_operator_command(sub: Any, name: str, op: str, help: str,
                          op_args: Sequence[str]) -> argparse.ArgumentParser:
    """A subcommand of `sub` (add_subparsers' result) that queues operator command `op`
    with the parsed arguments named in `op_args`."""
    p = sub.add_parser(name, help=help, description=help + ". It acts through the running gateway "
                       "(queued in its database, applied with its next tick, or when it starts).")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--timeout", type=_wait_seconds, default=10.0, metavar="S",
                   help=f"wait this long for the gateway's outcome (default 10); exit {EXIT_NOT_APPLIED} if none")
    p.add_argument("--no-wait", action="store_true", help="queue the command and exit")
    p.set_defaults(func=_operator_command, op=op, op_args=op_args)
    return p


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 3600:  # also refuses nan
        raise argparse.ArgumentTypeError(f"--timeout must be 0 to 3600 seconds, not {text!r}")
    return value


def _slot_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"slot must be a whole number, not {text!r}") from None


def _check(args: argparse.Namespace) -> int:
    from recarga.core.sites import by_site
    from recarga.core.stations import load_stations

    cfg = C.load(args.config)
    stations = load_stations(cfg.stations, cfg.site_distance_m)
    sites = len(by_site(stations))
    print(f"ok: region {cfg.engine.region}, {len(stations)} stations at {sites} site{'s' * (sites != 1)} "
          f"from {cfg.stations}, "
          f"database {cfg.database}, broker {cfg.broker.host}:{cfg.broker.port} as {cfg.broker.username}, "
          f"policy {cfg.engine.policy}")
    return 0


def _print_file(args: argparse.Namespace) -> int:
    sys.stdout.write(args.file.read_text())
    return 0


CONFIG_HELP = "the gateway's configuration file (TOML; recarga-gateway example-config prints one)"


def main(argv: Sequence[str] | None = None, extra: Sequence[Command] = ()) -> int:
    ap = argparse.ArgumentParser(prog="recarga-gateway", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve the region until SIGTERM")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(func=_run)
    p = sub.add_parser("reservations", help="list reservations from the database")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--car", help="only this car's reservations")
    p.add_argument("--active", action="store_true", help="only held, confirmed and checked-in ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_reservations)
    p = sub.add_parser("reservation", help="act on one reservation (through the running gateway)")
    ops = p.add_subparsers(dest="action", required=True)
    p = _add_operator_command(ops, "end", "reservation_end", "end an active reservation: a checked-in one "
                              "completes, a held or confirmed one is cancelled; its car is told", ["reservation"])
    p.add_argument("reservation", metavar="ID", help="the reservation's id (recarga-gateway reservations)")
    p = sub.add_parser("slot", help="take a slot out of service or put it back (through the running gateway)")
    ops = p.add_subparsers(dest="action", required=True)
    p = _add_operator_command(ops, "out-of-service", "slot_out_of_service", "take a slot out of service: "
                              "never offered, its reservations faulted (cars offered another slot), the "
                              "station told", ["station", "slot", "reason"])
    p.add_argument("station", help="the station's id")
    p.add_argument("slot", type=_slot_number, help="the slot's number (1 = the first)")
    p.add_argument("--reason", default="", help="why, for the log and the database (at most 200 characters)")
    p = _add_operator_command(ops, "in-service", "slot_in_service", "put a slot back in service: offered "
                              "again once its station reports it free", ["station", "slot"])
    p.add_argument("station", help="the station's id")
    p.add_argument("slot", type=_slot_number, help="the slot's number (1 = the first)")
    p = sub.add_parser("backup", help="copy the database while the gateway runs (SQLite's online backup)")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--to", required=True, metavar="FILE", help="the backup's file (must not exist)")
    p.set_defaults(func=_backup)
    p = sub.add_parser("check-config", help="load the configuration and the stations, then exit")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(func=_check)
    p = sub.add_parser("example-config", help="print the example configuration, to start a gateway.toml from")
    p.set_defaults(func=_print_file, file=EXAMPLE_CONFIG)
    p = sub.add_parser("systemd-unit", help="print the systemd unit recarga-gateway.service (docs/deployment.md)")
    p.set_defaults(func=_print_file, file=SYSTEMD_UNIT)
    for c in extra:
        p = sub.add_parser(c.name, help=c.help)
        c.add_arguments(p)
        p.set_defaults(func=c.run)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (C.ConfigError, ValueError, OSError, DatabaseUnusable) as e:
        print(f"recarga-gateway: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
