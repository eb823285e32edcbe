"""recarga-gateway: run the region's gateway, inspect its state, check its configuration;
print the shipped example configuration and systemd unit to start a deployment from."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from recarga import __version__
from recarga.core import resources
from recarga.gateway import config as C
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
    from recarga.gateway.service import EXIT_DB_UNUSABLE, GatewayService
    from recarga.gateway.store import DatabaseUnusable

    cfg = C.load(args.config)
    logging.basicConfig(level=cfg.log_level, format=LOG_FORMAT)
    try:
        service = GatewayService(cfg)
    except DatabaseUnusable as e:
        logging.getLogger("recarga.gateway").critical("%s; not starting", e)
        return EXIT_DB_UNUSABLE
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    service.run()
    return 0


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
                      f"eta={_utc(r.eta)} start={_utc(r.start)} end={_utc(r.end)}")
    finally:
        store.close()
    return 0


def _backup(args: argparse.Namespace) -> int:
    from recarga.gateway.store import backup

    cfg = C.load(args.config)
    pages = backup(cfg.database, Path(args.to))
    print(f"backed up {cfg.database} to {args.to} ({pages} pages)")
    return 0


def _check(args: argparse.Namespace) -> int:
    from recarga.core.stations import load_stations

    cfg = C.load(args.config)
    stations = load_stations(cfg.stations)
    print(f"ok: region {cfg.engine.region}, {len(stations)} stations from {cfg.stations}, "
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
