"""recarga-central: run central, show its holds and network view, check its configuration,
generate its broker's configuration."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from recarga import __version__
from recarga.central import config as C
from recarga.core import broker_config, broker_dir, central_broker
from recarga.core.bridge import bridge_user


def _run(args: argparse.Namespace) -> int:
    from recarga.central.service import CentralService
    from recarga.core.service_manager import ServiceManager

    cfg = C.load(args.config)
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = CentralService(cfg, service_manager=ServiceManager.from_environment())
    signal.signal(signal.SIGTERM, lambda *_: service.stop())
    signal.signal(signal.SIGINT, lambda *_: service.stop())
    service.run()
    return 0


def _open_store(args: argparse.Namespace):
    from recarga.central.store import Store

    cfg = C.load(args.config)
    return cfg, Store(cfg.database, cfg.synchronous)


def _holds(args: argparse.Namespace) -> int:
    _, store = _open_store(args)
    try:
        for h in store.holds(active_only=args.active):
            if args.json:
                print(json.dumps(asdict(h)))
            else:
                print(f"{h.xid} car={h.car} {h.region}/{h.station}/{h.slot} {h.reservation} {h.state} "
                      f"hold_until={h.hold_until:.0f}")
    finally:
        store.close()
    return 0


def _view(args: argparse.Namespace) -> int:
    from recarga.central.view import NetworkView

    cfg, store = _open_store(args)
    try:
        view = NetworkView(max_age_s=cfg.overflow.summary_max_age_s)
        for s in store.summaries():
            view.apply(s.region, s.shard, s)
    finally:
        store.close()
    fresh = view.fresh_regions(time.time())
    for region in sorted(set(cfg.regions) | set(fresh)):
        stations = view.stations(region)
        slots = sum(g.usable for s in stations for g in s.groups)
        free = sum(g.free for s in stations for g in s.groups)
        row = {"region": region, "fresh": region in fresh, "at": fresh.get(region), "stations": len(stations),
               "usable_slots": slots, "free_slots": free}
        print(json.dumps(row) if args.json else
              f"{region}: {len(stations)} stations, {free}/{slots} slots free"
              f"{'' if region in fresh else ' (no recent summary)'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    cfg = C.load(args.config)
    print(f"ok: instance {cfg.instance}, {len(cfg.regions)} regions ({', '.join(sorted(cfg.regions))}), "
          f"database {cfg.database}, broker {cfg.broker.host}:{cfg.broker.port} as {cfg.broker.username}, "
          f"policy {cfg.overflow.policy}")
    return 0


def _credential(text: str) -> tuple[str, str]:
    name, sep, password = text.partition(":")
    if not sep or not name or not password:
        raise argparse.ArgumentTypeError(f"expected NAME:PASSWORD, got {text!r}")
    return name, password


def _broker_config(args: argparse.Namespace) -> int:
    # one broker user per central instance: the broker takes user names as client ids
    users = {central_broker.central_user(i): Path(f).read_text().strip() for i, f in args.instance}
    for region, password in args.region:
        users[bridge_user(region)] = password
    try:
        port, tls = broker_config.listeners_from(args)
        conf = central_broker.write_central_broker_dir(
            args.dir, port, users, [central_broker.central_user(i) for i, _ in args.instance],
            [r for r, _ in args.region], args.host,
            run_as=args.run_as, log_stdout=args.log_stdout, dropin=args.dropin, tls=tls)
    except broker_dir.BrokerConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(conf)
    return 0


CONFIG_HELP = "central's configuration file (TOML; deploy/central.example.toml documents it)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="recarga-central", description=__doc__)
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="serve overflow between regions until SIGTERM")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(func=_run)
    p = sub.add_parser("holds", help="list overflow holds from the database")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--active", action="store_true", help="only held, confirmed and checked-in ones")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_holds)
    p = sub.add_parser("view", help="the network view: per region its stations and free slots")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_view)
    p = sub.add_parser("check-config", help="load the configuration, then exit")
    p.add_argument("--config", required=True, metavar="FILE", help=CONFIG_HELP)
    p.set_defaults(func=_check)
    p = sub.add_parser("broker-config", help="generate the central broker's conf, password file and ACL")
    p.add_argument("--dir", required=True, type=Path)
    broker_config.add_listener_arguments(p)
    p.add_argument("--instance", action="append", required=True, type=_credential, metavar="INSTANCE:PASSWORD_FILE",
                   help="a central instance (its central.toml's `instance`) and the file holding its broker "
                        "user's password (that central.toml's [broker] password_file); its user is "
                        "central-INSTANCE (repeat for each instance)")
    p.add_argument("--region", action="append", default=[], type=_credential, metavar="REGION:PASSWORD",
                   help="a region and the password of its bridge user bridge-REGION (repeat)")
    p.add_argument("--run-as", default="mosquitto")
    p.add_argument("--log-stdout", action="store_true")
    p.add_argument("--dropin", action="store_true", help="a conf.d drop-in for Debian's mosquitto.conf")
    p.set_defaults(func=_broker_config)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except (C.ConfigError, broker_dir.BrokerConfigError, ValueError, OSError) as e:
        print(f"recarga-central: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
